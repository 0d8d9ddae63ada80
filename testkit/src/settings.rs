//! The settings a test runs the API and the worker with: their real command
//! lines (parsed as the binaries parse them, environment included), pointed at
//! the test's own database and queues and at ports the system picks. The
//! shipped crates have no test constructor of their own.

use clap::Parser;

use crate::TestEnv;

impl TestEnv {
    /// `shutoff-api` on a random port, on this test's database and queues.
    pub fn api_settings(&self) -> shutoff_api::Settings {
        let args = self.common_args();
        shutoff_api::Settings::try_parse_from(
            ["shutoff-api", "--listen", "127.0.0.1:0"]
                .into_iter()
                .map(String::from)
                .chain(args),
        )
        .expect("the test settings of shutoff-api parse")
    }

    /// `shutoff-worker` for the default host with a random health port, an
    /// id of its own and its own rescuer (these tests often run workers
    /// without an API), on this test's database and queues.
    pub fn worker_settings(&self) -> shutoff_worker::Settings {
        let id = format!("test-{}", uuid::Uuid::new_v4().simple());
        let args = self.common_args();
        shutoff_worker::Settings::try_parse_from(
            [
                "shutoff-worker",
                "--health-listen",
                "127.0.0.1:0",
                "--worker-id",
                &id,
                "--host",
                crate::env::DEFAULT_HOST,
                "--rescuer",
            ]
            .into_iter()
            .map(String::from)
            .chain(args),
        )
        .expect("the test settings of shutoff-worker parse")
    }

    /// The shared flags: this test's database, queue prefix and retry delays.
    fn common_args(&self) -> Vec<String> {
        let delays: Vec<String> = self
            .topology
            .retry_delays_ms
            .iter()
            .map(u64::to_string)
            .collect();
        vec![
            "--database-url".into(),
            self.database_url.clone(),
            "--queue-prefix".into(),
            self.topology.prefix.clone(),
            "--retry-delays-ms".into(),
            delays.join(","),
        ]
    }
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::PgPoolOptions;

    use super::*;

    #[tokio::test]
    async fn test_settings_point_at_the_tests_own_database_and_queues_on_random_ports() {
        let pool = PgPoolOptions::new()
            .connect_lazy("postgres://postgres@127.0.0.1:5432/some_test_db")
            .unwrap();
        let env = TestEnv::new(pool);

        let api = env.api_settings();
        let worker = env.worker_settings();

        for common in [&api.common, &worker.common] {
            assert_eq!(common.database_url.len(), 1);
            assert_eq!(
                common.database_url.hosts()[0].get_database(),
                Some("some_test_db")
            );
            assert_eq!(common.database_url.name(0), "127.0.0.1:5432");
            assert_eq!(common.queue_prefix, env.topology.prefix);
            assert_eq!(common.retry_delays_ms, vec![100, 200]);
        }
        assert_eq!(api.listen.port(), 0);
        assert_eq!(worker.health_listen.port(), 0);
        assert!(worker.worker_id.unwrap().starts_with("test-"));
    }
}
