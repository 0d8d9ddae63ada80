//! The path parameters several routes share, as the OpenAPI document
//! describes them (the handlers extract them as strings and parse them).

use utoipa::IntoParams;

/// The project in the URL.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProjectPath {
    /// The project id: the token's project, 32 hex characters. Another
    /// project's id is a 400.
    #[param(example = "b72dc11461c84102b97576ae24d2b88c")]
    pub project_id: String,
}

/// The project and server in the URL.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ServerPath {
    /// The project id: the token's project, 32 hex characters. Another
    /// project's id is a 400.
    #[param(example = "b72dc11461c84102b97576ae24d2b88c")]
    pub project_id: String,
    /// The instance UUID; anything else is a 404.
    #[param(example = "0199340e-0f3e-4612-96be-6f1861b192b5")]
    pub server_id: String,
}
