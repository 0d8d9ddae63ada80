//! The one rule for a test that needs something the machine may lack (QEMU,
//! libvirtd, a private RabbitMQ, a build feature): it runs when nothing is
//! missing; otherwise it is skipped with a message, except in CI (the env
//! var `CI` is set), where `.ci/run` installs everything, so it fails.

/// True when `missing` is none; otherwise skips (false) or, in CI, panics.
pub fn runnable(missing: Option<String>) -> bool {
    match missing {
        None => true,
        Some(m) if std::env::var_os("CI").is_some() => panic!("CI is set but {m}"),
        Some(m) => {
            eprintln!("SKIPPED: {m}");
            false
        }
    }
}
