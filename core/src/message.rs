//! The job message carried by RabbitMQ. It only names a job that is already
//! committed in PostgreSQL: the database, not the message, says what to do.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::HostName;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopJob {
    pub job_id: Uuid,
    pub instance_uuid: Uuid,
    /// The instance's host: the message is routed to that host's queue, and
    /// only a worker of that host may carry the stop out (its claim checks
    /// the instance's host in PostgreSQL, not this field).
    pub host: HostName,
    /// Carried so the worker's tracing span shows the API's request id.
    pub request_id: String,
}

impl StopJob {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("StopJob always serialises")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
