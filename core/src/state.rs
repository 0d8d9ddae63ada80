//! States, mirroring the database's text columns and Nova's spellings.
//!
//! Each enum reads and writes its column directly (`sqlx::Type`), so the
//! store binds `TaskState::PoweringOff` rather than spelling the text, and a
//! value the schema allows but Rust does not know fails loudly on read.

use std::fmt;

/// A Rust enum stored as its text spelling: `as_str`, `parse`, `ALL`,
/// `Display`, and sqlx's `Type`/`Encode`/`Decode` (also in arrays).
macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            /// Every value, in the schema's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The database's (and Nova's) spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                $name::parse(text).ok_or_else(|| {
                    format!("{text:?} is not a {}", stringify!($name)).into()
                })
            }
        }
    };
}

/// Nova's `vm_state`. For stopping: the API accepts a stop only from
/// `Active` or `Error` (see [`VmState::is_stoppable`]); the worker moves the
/// instance to `Stopped` after a successful power-off. Every other state is
/// set by whoever owns the instance (`shutoff-admin`, or the cloud).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmState {
    Active,
    Building,
    Paused,
    Suspended,
    Stopped,
    Rescued,
    Resized,
    SoftDeleted,
    Deleted,
    Error,
    Shelved,
    ShelvedOffloaded,
}

text_enum!(VmState {
    Active => "active",
    Building => "building",
    Paused => "paused",
    Suspended => "suspended",
    Stopped => "stopped",
    Rescued => "rescued",
    Resized => "resized",
    SoftDeleted => "soft-delete",
    Deleted => "deleted",
    Error => "error",
    Shelved => "shelved",
    ShelvedOffloaded => "shelved_offloaded",
});

impl VmState {
    /// The states a stop is accepted from, as Nova's `check_instance_state`.
    pub const STOPPABLE: [VmState; 2] = [VmState::Active, VmState::Error];

    pub fn is_stoppable(self) -> bool {
        Self::STOPPABLE.contains(&self)
    }

    /// API `status`, as Nova maps it (a stop in progress still shows ACTIVE).
    pub fn status(self) -> &'static str {
        match self {
            VmState::Active => "ACTIVE",
            VmState::Stopped => "SHUTOFF",
            VmState::Error => "ERROR",
            VmState::Building => "BUILD",
            VmState::Paused => "PAUSED",
            VmState::Suspended => "SUSPENDED",
            VmState::Deleted => "DELETED",
            VmState::Rescued => "RESCUE",
            VmState::Resized => "VERIFY_RESIZE",
            VmState::SoftDeleted => "SOFT_DELETED",
            VmState::Shelved => "SHELVED",
            VmState::ShelvedOffloaded => "SHELVED_OFFLOADED",
        }
    }
}

/// Nova's `task_state`, as far as shutoff moves it (NULL is `None`).
/// `PoweringOff` is set by the acceptance of a stop, and cleared by the
/// worker when the stop ends (succeeded or failed) or by the rescuer when it
/// gives up. Other task states may be written by the cloud that owns the
/// instance; a stop is refused while any is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TaskState {
    PoweringOff,
    /// A task shutoff does not run (for example `rebooting`), kept verbatim
    /// so the refusal names it as Nova would.
    Other(String),
}

impl TaskState {
    pub fn as_str(&self) -> &str {
        match self {
            TaskState::PoweringOff => "powering-off",
            TaskState::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "powering-off" => TaskState::PoweringOff,
            other => TaskState::Other(other.to_string()),
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl sqlx::Type<sqlx::Postgres> for TaskState {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <&str as sqlx::Type<sqlx::Postgres>>::type_info()
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for TaskState {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for TaskState {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(TaskState::parse(
            <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?,
        ))
    }
}

/// Nova's power_state integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i16)]
pub enum PowerState {
    NoState = 0,
    Running = 1,
    Paused = 3,
    Shutdown = 4,
    Crashed = 6,
    Suspended = 7,
}

impl PowerState {
    pub fn as_i16(self) -> i16 {
        self as i16
    }
}

/// A job's state. Transitions are conditional `UPDATE ... WHERE state = ...`
/// in [`crate::store::claim`] and [`crate::store::rescue`], so an illegal move fails in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Committed with the accepted request; the API (or its relay) sets
    /// `published_at` once the broker confirmed the message, and a worker
    /// moves it to `Running`.
    Queued,
    /// Handed back to the queue (by the rescuer, or by a worker that stopped
    /// before powering off); a worker moves it to `Running`.
    Published,
    /// A worker holds a lease on it; that worker moves it to `Succeeded`,
    /// `Failed` or `Retrying`. If the lease expires, another worker or the
    /// rescuer takes it over.
    Running,
    /// Waiting out a back-off delay in a retry queue; a worker moves it back
    /// to `Running` when the delayed message returns.
    Retrying,
    /// Terminal: the VM is off and the instance is `stopped`.
    Succeeded,
    /// Terminal: the stop failed for good; an instance fault says why.
    Failed,
}

text_enum!(JobState {
    Queued => "queued",
    Published => "published",
    Running => "running",
    Retrying => "retrying",
    Succeeded => "succeeded",
    Failed => "failed",
});

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_states_round_trip_through_their_database_spelling() {
        for &s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("done"), None);
    }

    #[test]
    fn status_follows_nova_mapping() {
        assert_eq!(VmState::Active.status(), "ACTIVE");
        assert_eq!(VmState::Stopped.status(), "SHUTOFF");
        assert_eq!(VmState::Error.status(), "ERROR");
        assert_eq!(VmState::parse("weird"), None);
        for &s in VmState::ALL {
            assert_eq!(VmState::parse(s.as_str()), Some(s));
        }
        assert_eq!(TaskState::parse("powering-off"), TaskState::PoweringOff);
        assert_eq!(TaskState::parse("rebooting").as_str(), "rebooting");
    }

    /// The enums read and write the very text columns of the schema: every
    /// vm_state the CHECK constraint allows is one Rust knows.
    #[sqlx::test(migrator = "crate::store::MIGRATOR")]
    async fn states_are_the_columns_spelling(pool: sqlx::PgPool) {
        let back: Vec<VmState> = sqlx::query_scalar("SELECT unnest($1::text[])")
            .bind(VmState::ALL)
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(back, VmState::ALL);
        let check: String = sqlx::query_scalar(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint
              WHERE conrelid = 'instances'::regclass AND conname LIKE '%vm_state%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        for s in VmState::ALL {
            assert!(check.contains(&format!("'{s}'")), "{s} not in {check}");
        }
        assert_eq!(
            check.matches("::text").count(),
            VmState::ALL.len(),
            "{check}"
        );
        let t: TaskState = sqlx::query_scalar("SELECT $1::text")
            .bind(TaskState::PoweringOff)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(t, TaskState::PoweringOff);
    }
}
