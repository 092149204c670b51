//! `Server::run_until_ctrl_c`: a server serves until the process gets SIGINT, then shuts
//! down gracefully (its client is told GoAway, then closed). A test binary of its own: the
//! Ctrl-C handler is the process's.

use std::process::Command;
use std::time::{Duration, Instant};

use zserver::{Calls, Error, Router};

#[test]
fn run_until_ctrl_c_serves_until_sigint_then_shuts_down() {
    zserver::block_on(async {
        let router = Router::new().console("hello", |_ctx, name: String| async move {
            Ok(format!("hello, {name}"))
        });
        let server = zserver::server().router(router).bind("127.0.0.1:0").await?;
        let client = zserver::client().connect(server.local_addr()).await?;
        // The handler is installed by the call, before the future runs: the signal sent
        // from another thread right after cannot end the process.
        let run = server.run_until_ctrl_c();
        assert_eq!(client.console("hello", "ann").await?, "hello, ann");
        let pid = std::process::id().to_string();
        let sent = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            Command::new("kill").args(["-INT", &pid]).status().unwrap()
        });
        let start = Instant::now();
        run.await?;
        assert!(sent.join().unwrap().success());
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "ran until the signal"
        );
        assert!(server.is_shutting_down());
        client.connection().closed().await;
        assert!(client.console("hello", "bob").await.is_err());
        // Once the signal came, a later wait ends at once.
        zserver::ctrl_c().await?;
        Ok::<_, Error>(())
    })
    .unwrap();
}
