//! Signing in to a NATS server that wants it: a user and password (or a token) in the URL,
//! or a credentials file (user JWT + nkey seed) for a server in operator mode. The secret
//! never shows in the node's log or errors.

use std::path::Path;

use agent_host::node::Node;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use nkeys::KeyPair;

use super::durable::ask;
use super::nats_server::NatsServer;
use crate::support::{plugin, test_config, NodeProcess};

/// A NATS JWT: `claims` (with `nats`) about `subject`, issued and signed by `issuer`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = serde_json::json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let claims = serde_json::json!({
        "jti": uuid::Uuid::now_v7().simple().to_string().to_uppercase(),
        "iat": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// A server in operator mode (an operator, a system account and one account with JetStream,
/// all preloaded) and a `.creds` file for a user of that account, written into `dir`.
fn operator_mode(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let operator = KeyPair::new_operator();
    let system = KeyPair::new_account();
    let account = KeyPair::new_account();
    let user = KeyPair::new_user();
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    let mut with_jetstream = unlimited.clone();
    for (k, v) in [
        ("mem_storage", -1),
        ("disk_storage", -1),
        ("streams", -1),
        ("consumer", -1),
    ] {
        with_jetstream[k] = v.into();
    }
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        serde_json::json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
    );
    let account_claims = |limits: &serde_json::Value| {
        serde_json::json!({"type": "account", "version": 2, "limits": limits,
            "default_permissions": {"pub": {}, "sub": {}}})
    };
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        account_claims(&unlimited),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "agents",
        account_claims(&with_jetstream),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "agent-host",
        serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {},
            "subs": -1, "data": -1, "payload": -1}),
    );
    let config = dir.join("operator.conf");
    std::fs::write(
        &config,
        format!(
            "operator: {operator_jwt}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {system_jwt}\n  {}: {account_jwt}\n}}\n",
            system.public_key(),
            system.public_key(),
            account.public_key(),
        ),
    )
    .unwrap();
    let creds = dir.join("node.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    (config, creds)
}

#[tokio::test]
async fn a_node_signs_in_with_a_credentials_file_to_a_server_in_operator_mode() {
    let keys = tempfile::tempdir().unwrap();
    let (server_config, creds) = operator_mode(keys.path());
    let Some(server) = NatsServer::start_with_args(
        "nats credentials file",
        &["-c", server_config.to_str().unwrap()],
    ) else {
        return;
    };

    // Without credentials the server refuses the node, and the node says what to check.
    let mut config = test_config(tempfile::tempdir().unwrap().path());
    config.nats.url = Some(server.url());
    let err = match Node::start(config).await {
        Err(e) => format!("{e:#}"),
        Ok(_) => panic!("a node without credentials started on a server in operator mode"),
    };
    assert!(err.contains("credentials_file"), "{err}");

    // A file that is not a credentials file: named, with what was expected.
    let junk = keys.path().join("junk.creds");
    std::fs::write(&junk, "not a creds file").unwrap();
    let mut config = test_config(tempfile::tempdir().unwrap().path());
    config.nats.url = Some(server.url());
    config.nats.credentials_file = Some(junk.clone());
    let err = match Node::start(config).await {
        Err(e) => format!("{e:#}"),
        Ok(_) => panic!("a node with a junk credentials file started"),
    };
    assert!(err.contains(&junk.display().to_string()), "{err}");
    assert!(err.contains("user JWT and its nkey seed"), "{err}");

    // With the file, through `host run` and NATS_CREDS: agents answer, JetStream KV works
    // in the account, and the log has neither the seed nor the JWT.
    let node = NodeProcess::start_with_env(
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[nats]\nurl = \"{}\"\n",
            server.url()
        ),
        &[("NATS_CREDS", creds.to_str().unwrap())],
    );
    let loaded = node.host(&["load", plugin("counter").to_str().unwrap()]);
    assert!(loaded.status.success(), "{}", node.log_text());
    let client = async_nats::ConnectOptions::with_credentials_file(&creds)
        .await
        .unwrap()
        .connect(server.url())
        .await
        .unwrap();
    assert_eq!(ask(&client, "agent.to.counter.cmd", "add 4").await, "4");
    let log = node.log_text();
    assert!(log.contains("connected to NATS"), "{log}");
    let seed = std::fs::read_to_string(&creds).unwrap();
    let seed_line = seed.lines().find(|l| l.starts_with("SU")).unwrap();
    assert!(
        !log.contains(seed_line),
        "the seed is not in the log:\n{log}"
    );
    node.stop();
}

#[tokio::test]
async fn a_node_signs_in_with_the_credentials_in_its_url_and_never_shows_the_password() {
    const PASSWORD: &str = "s3cret-pw-71";
    let Some(server) = NatsServer::start_with_args(
        "nats credentials in the url",
        &["--user", "agent", "--pass", PASSWORD],
    ) else {
        return;
    };
    let with = |password: &str| format!("nats://agent:{password}@127.0.0.1:{}", server.port());

    // A wrong password: refused at start, saying what to check, with the password masked.
    let mut config = test_config(tempfile::tempdir().unwrap().path());
    config.nats.url = Some(with("wrong-pw-42"));
    let err = match Node::start(config).await {
        Err(e) => format!("{e:#}"),
        Ok(_) => panic!("a node with a wrong password started"),
    };
    assert!(err.contains("check the user and password"), "{err}");
    assert!(err.contains("nats://agent:***@127.0.0.1"), "{err}");
    assert!(
        !err.contains("wrong-pw-42"),
        "the password is not in the error: {err}"
    );

    // The right one, through `host run`: it serves agents and its log never has the password.
    let node = NodeProcess::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[nats]\nurl = \"{}\"\n",
        with(PASSWORD)
    ));
    let echo = plugin("echo");
    let loaded = node.host(&["load", echo.to_str().unwrap()]);
    assert!(loaded.status.success(), "{}", node.log_text());
    let client =
        async_nats::ConnectOptions::with_user_and_password("agent".into(), PASSWORD.into())
            .connect(server.url())
            .await
            .unwrap();
    assert_eq!(
        ask(&client, "agent.to.echo.x", "signed in").await,
        "signed in"
    );
    let log = node.log_text();
    assert!(log.contains("connected to NATS"), "{log}");
    assert!(log.contains("nats://agent:***@127.0.0.1"), "{log}");
    assert!(
        !log.contains(PASSWORD),
        "the password is not in the log:\n{log}"
    );
    node.stop();
}
