//! What `/readyz` answers, on the API and on a worker's health port: whether
//! the process can reach PostgreSQL and RabbitMQ right now.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub database: bool,
    pub broker: bool,
    pub ready: bool,
}

impl Readiness {
    pub fn new(database: bool, broker: bool) -> Self {
        Readiness {
            database,
            broker,
            ready: database && broker,
        }
    }

    /// 200 when ready, 503 otherwise: an orchestrator routes by it.
    pub fn status_code(&self) -> u16 {
        if self.ready { 200 } else { 503 }
    }
}
