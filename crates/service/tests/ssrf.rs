//! `POST /labelling/url` with default settings refuses every URL that points
//! into the server's own network, with the contract's 400 — and makes no
//! connection to the target. Nothing here touches the internet: every refusal
//! happens before a connection (or, for names, a DNS lookup) leaves the host.

mod common;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;

use axum::http::StatusCode;
use common::*;
use photolabel_service::fetch::{FetchConfig, Fetcher, HostResolver};

/// Maps every name to one address, like a hostile DNS record would.
struct FixedResolver(IpAddr);

impl HostResolver for FixedResolver {
    fn resolve(
        &self,
        _host: &str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>> {
        let ip = self.0;
        Box::pin(async move { Ok(vec![ip]) })
    }
}

async fn default_app() -> (TestApp, String) {
    let app = AppBuilder::new()
        .build(FixedModel(indoor_probabilities()))
        .await;
    assert!(!app.args.fetch.allow_private_urls, "default settings");
    let key = app.create_key("acme", None, None).await;
    (app, key)
}

async fn assert_refused(app: &TestApp, key: &str, url: &str) {
    let (status, body) = app.send(url_request(Some(key), &url_json(url))).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, URL_400),
        "{url} must be refused"
    );
}

#[tokio::test]
async fn literal_internal_addresses_are_refused_without_connecting() {
    let (app, key) = default_app().await;
    let tripwire = Tripwire::bind("127.0.0.1");
    let port = tripwire.port();
    for url in [
        format!("http://127.0.0.1:{port}/a.jpg"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0x7f.1:{port}/"),
        format!("http://127.1:{port}/"),
        format!("http://0177.0.0.1:{port}/"),
        format!("https://127.0.0.1:{port}/a.jpg"),
    ] {
        assert_refused(&app, &key, &url).await;
    }
    assert_eq!(tripwire.connections(), 0, "no connection reached loopback");
}

#[tokio::test]
async fn other_forbidden_ranges_are_refused() {
    let (app, key) = default_app().await;
    for url in [
        "http://[::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://255.255.255.255/",
        "http://224.0.0.1/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:7f00:1::]/",
    ] {
        assert_refused(&app, &key, url).await;
    }
}

#[tokio::test]
async fn a_listener_on_ipv6_loopback_gets_no_connection() {
    let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
        return; // no IPv6 loopback on this machine: nothing to trip
    };
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let (app, key) = default_app().await;
    assert_refused(&app, &key, &format!("http://[::1]:{port}/a.jpg")).await;
    assert!(listener.accept().is_err(), "no connection reached [::1]");
}

#[tokio::test]
async fn other_schemes_and_huge_urls_are_refused() {
    let (app, key) = default_app().await;
    let long = format!("http://example.com/{}", "a".repeat(10_000));
    for url in [
        "file:///etc/passwd",
        "ftp://example.com/a.jpg",
        "gopher://example.com/",
        "data:image/png;base64,AAAA",
        "javascript:alert(1)",
        long.as_str(),
    ] {
        assert_refused(&app, &key, url).await;
    }
    assert!(long.len() > 10_000);
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_without_connecting() {
    let tripwire = Tripwire::bind("127.0.0.1");
    let fetcher = Fetcher::with_parts(
        FetchConfig::default(),
        Arc::new(FixedResolver(IpAddr::V4(Ipv4Addr::LOCALHOST))),
        Arc::new(photolabel_service::fetch::PublicOnly),
    )
    .expect("fetcher");
    let app = AppBuilder::new()
        .fetcher(fetcher)
        .build(FixedModel(indoor_probabilities()))
        .await;
    let key = app.create_key("acme", None, None).await;
    assert_refused(
        &app,
        &key,
        &format!("http://photos.example.com:{}/a.jpg", tripwire.port()),
    )
    .await;
    assert_eq!(tripwire.connections(), 0, "no connection reached loopback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_loopback_is_refused_without_connecting() {
    let tripwire = Tripwire::bind("127.0.0.1");
    let target = format!("http://127.0.0.1:{}/a.jpg", tripwire.port());
    // The "public" server: allowed by the injected policy, on 127.0.0.2.
    let public = TestServer::start(
        "127.0.0.2",
        axum::Router::new().fallback(move || {
            let target = target.clone();
            async move { axum::response::Redirect::temporary(&target) }
        }),
    )
    .await;
    let app = AppBuilder::new()
        .fetcher(fetcher_allowing(public.addr.ip()))
        .build(FixedModel(indoor_probabilities()))
        .await;
    let key = app.create_key("acme", None, None).await;
    assert_refused(&app, &key, &public.url("/photo.jpg")).await;
    assert_eq!(
        public.hits(),
        vec!["/photo.jpg"],
        "the first hop was fetched"
    );
    assert_eq!(tripwire.connections(), 0, "the redirect target was not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_three_redirects_are_refused() {
    // Each hop redirects to the next path on the same server, forever.
    let server = TestServer::start(
        "127.0.0.1",
        axum::Router::new().fallback(|uri: axum::http::Uri| async move {
            let n: u32 = uri.path().trim_start_matches("/hop").parse().unwrap_or(0);
            axum::response::Redirect::temporary(&format!("/hop{}", n + 1))
        }),
    )
    .await;
    let app = AppBuilder::new()
        .args(|a| a.fetch.allow_private_urls = true)
        .build(FixedModel(indoor_probabilities()))
        .await;
    let key = app.create_key("acme", None, None).await;
    assert_refused(&app, &key, &server.url("/hop0")).await;
    assert_eq!(server.hits(), vec!["/hop0", "/hop1", "/hop2", "/hop3"]);
}

#[tokio::test]
async fn allow_private_urls_lifts_only_the_address_check() {
    let app = AppBuilder::new()
        .args(|a| a.fetch.allow_private_urls = true)
        .build(FixedModel(indoor_probabilities()))
        .await;
    let key = app.create_key("acme", None, None).await;
    let long = format!("http://127.0.0.1/{}", "a".repeat(10_000));
    for url in ["file:///etc/passwd", "ftp://127.0.0.1/a.jpg", long.as_str()] {
        assert_refused(&app, &key, url).await;
    }
}

/// Positive control for the test above: with a policy that allows loopback,
/// the same injected name is fetched — from the address the resolver gave,
/// which shows that the client connects to the checked addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injected_resolver_decides_where_the_client_connects() {
    let server = TestServer::start(
        "127.0.0.1",
        serve_bytes(fixture("kitchen.jpg"), "image/jpeg"),
    )
    .await;
    let fetcher = Fetcher::with_parts(
        FetchConfig::default(),
        Arc::new(FixedResolver(server.addr.ip())),
        Arc::new(AllowOne(server.addr.ip())),
    )
    .expect("fetcher");
    let app = AppBuilder::new()
        .fetcher(fetcher)
        .build(FixedModel(indoor_probabilities()))
        .await;
    let key = app.create_key("acme", None, None).await;
    let url = format!("http://photos.example.com:{}/k.jpg", server.addr.port());
    let (status, body) = app.send(url_request(Some(&key), &url_json(&url))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, INDOOR_BODY));
    assert_eq!(server.hits(), vec!["/k.jpg"]);
}
