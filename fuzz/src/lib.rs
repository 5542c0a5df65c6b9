//! What each fuzz target does with one input.
//!
//! The fuzz targets in `fuzz_targets/` are one-line calls into this file,
//! and the ordinary test suite compiles this same file
//! (`crates/service/tests/fuzz_corpus.rs`, via `#[path]`) to replay every
//! committed corpus on stable: CI runs exactly the code that was fuzzed.
//! So this file may only use crates that both the fuzz crate and the
//! service's tests have (`photolabel-vision`, `photolabel-service`, `axum`,
//! `tokio`, `url`).
//!
//! Each function drives the production code the server runs on a client's
//! bytes and asserts what must hold whatever the bytes: no panic, and either
//! a usable result or one of the contract's documented errors. It returns
//! `Ok(())` when the input was accepted and `Err(status)` with the HTTP
//! status the client would get otherwise.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Request, StatusCode, Uri};
use photolabel_service::api::{parse_url_request, upload_image};
use photolabel_service::error::{ApiError, MissingField};
use photolabel_service::fetch::{is_public, validate_url, FetchConfig, PublicOnly};
use photolabel_vision::{prepare, ImageLimits, Prepared, Preprocessing, View};
use url::{Host, Url};

/// The server's limits and the embedded heads' preprocessing
/// (`models/heads.json`: squash, with the flipped view).
const LIMITS: ImageLimits = ImageLimits {
    max_pixels: 50_000_000,
};
const PREPROCESSING: Preprocessing = Preprocessing {
    view: View::Squash,
    flip: true,
};

/// Decode + preprocess: arbitrary bytes as an uploaded photo.
///
/// A photo that prepares must give the backbone exactly what it expects:
/// two views of 3×260×260 values inside the normalisation's range.
pub fn decode(data: &[u8]) -> Result<(), StatusCode> {
    match prepare(data, &LIMITS, &PREPROCESSING) {
        Ok(prepared) => {
            check_tensor(&prepared);
            Ok(())
        }
        // Every image error is the contract's 400 (api.rs maps them all).
        Err(_) => Err(StatusCode::BAD_REQUEST),
    }
}

fn check_tensor(prepared: &Prepared) {
    assert_eq!(prepared.tensor.shape(), &[2, 3, 260, 260]);
    // The backbone's normalisation, (x/255 − 0.498)/0.502, of 0 and 255.
    let normalise = |x: f32| (x / 255.0 - 0.498) / 0.502;
    let (low, high) = (normalise(0.0), normalise(255.0));
    assert!(
        prepared
            .tensor
            .iter()
            .all(|&v| v.is_finite() && (low - 1e-6..=high + 1e-6).contains(&v)),
        "tensor value outside the normalised range"
    );
}

/// The upload endpoint's body handling: the input is a `Content-Type`
/// header value, a newline, and the request body. It goes through axum's
/// multipart extractor and [`upload_image`] exactly as in the handler, and
/// the photo found (if any) through [`prepare`].
pub fn multipart(data: &[u8]) -> Result<(), StatusCode> {
    let (content_type, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(request) = Request::post("/labelling/img")
        .header(CONTENT_TYPE, content_type)
        .body(Body::from(body.to_vec()))
    else {
        // Not a header value HTTP/1 could carry; hyper would have refused
        // the request before any handler saw it.
        return Err(StatusCode::BAD_REQUEST);
    };
    let extracted = runtime().block_on(async {
        let multipart = Multipart::from_request(request, &()).await;
        upload_image(multipart).await
    });
    match extracted {
        Ok(photo) => {
            assert!(
                photo.len() <= body.len(),
                "the photo is larger than the body it came in"
            );
            decode(&photo)
        }
        Err(error) => {
            assert!(
                matches!(
                    error,
                    ApiError::MissingField(MissingField::Image) | ApiError::InvalidImage
                ),
                "undocumented upload error: {error:?}"
            );
            Err(error.status())
        }
    }
}

/// One single-threaded runtime per thread, like a request's task: the
/// extractor is async but does no I/O here.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime")
    })
}

/// The URL endpoint up to the network: the JSON body through
/// [`parse_url_request`], the URL through [`validate_url`] with the default
/// (public addresses only) policy — what `Fetcher::fetch` runs before it
/// resolves or connects.
///
/// A URL that passes must really be safe to hand to the HTTP client: http(s),
/// no credentials, a host that is not a forbidden literal address, and a
/// serialisation that reads back as the same URL — to `url` and to the
/// `http::Uri` parser the client uses — so nothing downstream can see a
/// different host than the one checked.
pub fn url_json(data: &[u8]) -> Result<(), StatusCode> {
    let url = match parse_url_request(data) {
        Ok(url) => url,
        Err(error) => {
            assert!(
                matches!(error, ApiError::MissingField(MissingField::Url)),
                "undocumented URL request error: {error:?}"
            );
            return Err(error.status());
        }
    };
    let config = FetchConfig::default();
    let Ok(checked) = validate_url(&url, &config, &PublicOnly) else {
        // Every refusal is the contract's "The URL is not valid".
        return Err(ApiError::InvalidUrl.status());
    };
    check_url(&checked, &config);
    Ok(())
}

fn check_url(checked: &Url, config: &FetchConfig) {
    assert!(matches!(checked.scheme(), "http" | "https"));
    assert!(checked.username().is_empty() && checked.password().is_none());
    assert!(checked.as_str().len() <= config.max_url_len);
    match checked.host() {
        None => panic!("a URL without a host passed"),
        Some(Host::Ipv4(ip)) => assert!(is_public(ip.into()), "{ip} passed"),
        Some(Host::Ipv6(ip)) => assert!(is_public(ip.into()), "{ip} passed"),
        Some(Host::Domain(name)) => {
            if let Ok(ip) = name.parse::<std::net::IpAddr>() {
                assert!(is_public(ip), "{ip} passed as a name");
            }
        }
    }
    let reparsed = Url::parse(checked.as_str()).expect("a checked URL re-parses");
    assert_eq!(&reparsed, checked, "serialisation is not stable");
    // reqwest turns the Url into an http::Uri by parsing its text; a host
    // that reads differently there would bypass the check.
    if let Ok(uri) = checked.as_str().parse::<Uri>() {
        assert_eq!(
            uri.host(),
            checked.host_str(),
            "http::Uri sees another host"
        );
    }
}
