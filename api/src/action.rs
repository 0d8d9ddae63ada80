//! The body of `POST .../servers/{id}/action`, parsed: pure (no I/O, no
//! crate-internal types), so `fuzz/` compiles this very file into its target.

/// The server actions we know. Only `os-stop` today; the parse is where the
/// next action is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAction {
    Stop,
}

/// Why a body names no action we perform. The messages are Nova's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// Not JSON, not an object, or not exactly one key.
    #[error("Malformed request body")]
    Malformed,
    /// One key, but not an action we know (shown up to 255 characters).
    #[error("There is no such action: {0}")]
    Unknown(String),
}

/// Longest part of an unknown action's name echoed back.
pub const MAX_SHOWN_CHARS: usize = 255;

impl ServerAction {
    /// Nova's rules: a JSON object with exactly one key; the key names the
    /// action; the value of `os-stop` is not checked.
    pub fn parse(body: &[u8]) -> Result<Self, ActionError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| ActionError::Malformed)?;
        let obj = value.as_object().ok_or(ActionError::Malformed)?;
        if obj.len() != 1 {
            return Err(ActionError::Malformed);
        }
        let (key, _) = obj.iter().next().expect("one key");
        match key.as_str() {
            "os-stop" => Ok(ServerAction::Stop),
            other => Err(ActionError::Unknown(
                other.chars().take(MAX_SHOWN_CHARS).collect(),
            )),
        }
    }

    /// The canonical body of this action; `parse` gives the action back.
    pub fn body(self) -> &'static str {
        match self {
            ServerAction::Stop => r#"{"os-stop": null}"#,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_stop_with_any_value_is_a_stop() {
        assert_eq!(
            ServerAction::parse(br#"{"os-stop": null}"#),
            Ok(ServerAction::Stop)
        );
        assert_eq!(
            ServerAction::parse(br#"{ "os-stop" : {} }"#),
            Ok(ServerAction::Stop)
        );
        assert_eq!(
            ServerAction::parse(ServerAction::Stop.body().as_bytes()),
            Ok(ServerAction::Stop)
        );
    }

    #[test]
    fn malformed_bodies_are_refused_with_nova_wording() {
        for body in [
            &b""[..],
            b"not json",
            b"[]",
            b"null",
            b"{}",
            br#"{"os-stop": null, "x": 1}"#,
        ] {
            assert_eq!(
                ServerAction::parse(body).unwrap_err().to_string(),
                "Malformed request body"
            );
        }
        assert_eq!(
            ServerAction::parse(br#"{"os-start": null}"#)
                .unwrap_err()
                .to_string(),
            "There is no such action: os-start"
        );
    }

    #[test]
    fn an_unknown_action_is_shown_at_most_255_characters_long() {
        let body = format!(r#"{{"{}": null}}"#, "é".repeat(1000));
        let Err(ActionError::Unknown(shown)) = ServerAction::parse(body.as_bytes()) else {
            panic!("not refused as unknown");
        };
        assert_eq!(shown.chars().count(), MAX_SHOWN_CHARS);
    }
}
