//! The real listener: requests over TCP, and graceful shutdown that lets an
//! in-flight request finish before the server returns.

mod common;

use common::*;
use photolabel_service::config::ServeArgs;
use photolabel_service::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = ServeArgs::defaults();
    args.store.data_dir = dir.path().to_path_buf();
    let (model, mut gate) = gate_model(indoor_probabilities());
    let server = Server::start(&args, move || Ok(vec![model]))
        .await
        .expect("start");
    server.state().worker.wait_loaded().await;
    let store = server.state().store.clone();
    let key = {
        let mut out = Vec::new();
        photolabel_service::cli::run(
            &*store,
            photolabel_service::KeysCommand::Create {
                name: "acme".into(),
                rate_limit: None,
                quota: None,
            },
            &mut out,
            &mut Vec::new(),
        )
        .await
        .expect("create key");
        String::from_utf8(out).expect("utf-8").trim().to_owned()
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let health = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);

    // A request that the model holds, then the shutdown signal.
    let body = multipart_body("image", "k.jpg", "image/jpeg", &fixture("kitchen.jpg"));
    let in_flight = tokio::spawn(
        client
            .post(format!("http://{addr}/labelling/img"))
            .header("x-api-key", &key)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(body)
            .send(),
    );
    gate.entered
        .recv()
        .await
        .expect("request reached the model");
    stop.send(()).expect("signal shutdown");

    // New connections are refused once the listener is closed; the request
    // in flight still gets its answer.
    gate.release.send(()).expect("release");
    let response = in_flight.await.expect("join").expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), INDOOR_BODY);

    serving.await.expect("join").expect("clean shutdown");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
    // The count was committed before the answer left, and survives.
    let reopened =
        photolabel_service::store::SqliteStore::open_file(&dir.path().join("photolabel.db"))
            .await
            .expect("reopen");
    use photolabel_service::store::Store as _;
    let usage = reopened.usage(1).await.expect("usage").expect("key 1");
    assert_eq!(usage.calls_used, 1);
}
