//! [`Shared::reload`] on real files: what it applies, what it rejects, and
//! the typed cause it keeps.

use std::error::Error as _;
use std::path::Path;

use super::*;
use crate::config::ConfigSource;
use crate::env::MapEnv;

/// A started sidekey's shared state, for a config at `path` (as `Server::start` builds it).
fn start(path: &Path) -> Shared {
    let journal = Arc::new(Journal::default());
    let gate = Gate::new(&journal, Trigger::Startup, Duration::ZERO);
    let source = ConfigSource::File(path.to_path_buf());
    let env: Arc<dyn Env> = Arc::new(MapEnv::default());
    let overrides = Overrides::default();
    let config = Config::load(&source, env.as_ref(), &gate, &overrides).unwrap();
    let reg = Registries::offline();
    let inputs = Inputs {
        env: env.as_ref(),
        files: &gate,
        reg: &reg,
        prev: None,
    };
    let snap = Snapshot::build(config, &inputs).unwrap();
    journal.commit(gate.finish().0);
    Shared::new(snap, reg, env, source, overrides, journal)
}

fn config(key: &Path) -> String {
    format!(
        "[routes.a]\ntype = \"openai-compatible\"\nupstream = \"http://127.0.0.1:9\"\nkey = \"path::{}\"\n",
        key.display()
    )
}

#[tokio::test]
async fn rejections_keep_their_cause_and_the_rest_applies() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = (dir.path().join("sidekey.toml"), dir.path().join("key"));
    std::fs::write(&key, "sk-1").unwrap();
    std::fs::write(&path, config(&key)).unwrap();
    let shared = start(&path);

    // A config that does not parse: the typed ConfigError is the source.
    std::fs::write(&path, "[routes.a\n").unwrap();
    let outcome = shared.reload(Trigger::Sighup);
    assert!(!outcome.swapped);
    let [Rejection::Config(e)] = outcome.rejected.as_slice() else {
        panic!("{:?}", outcome.rejected);
    };
    assert!(matches!(**e, ConfigError::Invalid { line: 1, .. }), "{e:?}");
    assert!(outcome.rejected[0].source().is_some());
    assert!(shared.config_stale().is_some());

    // The config is fixed, the key file is gone: the config applies, the
    // key keeps its last good value and is reported stale.
    std::fs::write(&path, config(&key)).unwrap();
    std::fs::remove_file(&key).unwrap();
    let outcome = shared.reload(Trigger::Sighup);
    assert!(outcome.swapped, "staleness is a change");
    let [Rejection::Credential(stale)] = outcome.rejected.as_slice() else {
        panic!("{:?}", outcome.rejected);
    };
    assert_eq!(
        (stale.route.as_str(), stale.reason.as_str()),
        ("a", "no such file")
    );
    assert_eq!(stale.fingerprint, crate::secret::Fingerprint::of(b"sk-1"));
    assert!(shared.config_stale().is_none());

    // Unchanged on the next look: nothing swapped, the same rejection.
    let again = shared.reload(Trigger::Periodic);
    assert!(!again.swapped);
    assert_eq!(again.rejected.len(), 1);
}
