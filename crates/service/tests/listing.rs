//! `POST /labelling/listing`: a whole listing in one request. The first
//! test runs the real model on fixture photos; the others use a stand-in
//! model, because they are about limits, errors and the ledger.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `kitchen.jpg` at half size, re-encoded: the same shot, a different file.
fn smaller_kitchen() -> Vec<u8> {
    let photo = image::load_from_memory(&fixture("kitchen.jpg")).expect("fixture decodes");
    let half = photo.resize(288, 192, image::imageops::FilterType::CatmullRom);
    let mut bytes = std::io::Cursor::new(Vec::new());
    half.write_to(&mut bytes, image::ImageFormat::Jpeg)
        .expect("encode");
    bytes.into_inner()
}

async fn credit(app: &TestApp, key: &str) -> Value {
    let (status, body) = app.send(get("/credit", Some(key))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    parse(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_of_real_photos_is_labelled_ordered_and_checked() {
    let app = AppBuilder::new().build_real_model().await;
    let key = app.create_key("agency", None, None).await;
    let small_kitchen = smaller_kitchen();
    let body = multipart_photos(&[
        ("kitchen.jpg", &fixture("kitchen.jpg")),
        ("bedroom.jpg", &fixture("bedroom.jpg")),
        ("broken.jpg", b"this is not a photo"),
        ("front.jpg", &fixture("facade.jpg")),
        ("kitchen-small.jpg", &small_kitchen),
        ("plan.jpg", &fixture("floorplan.jpg")),
        ("bathroom.jpg", &fixture("bathroom.jpg")),
    ]);
    let (status, body) = app.send(listing_upload(Some(&key), body)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listing = parse(&body);

    let photos = listing["photos"].as_array().expect("photos");
    assert_eq!(photos.len(), 7, "{body}");
    let names: Vec<&str> = photos
        .iter()
        .map(|p| p["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [
            "kitchen.jpg",
            "bedroom.jpg",
            "broken.jpg",
            "front.jpg",
            "kitchen-small.jpg",
            "plan.jpg",
            "bathroom.jpg"
        ]
    );
    for (i, photo) in photos.iter().enumerate() {
        assert_eq!(photo["index"], i, "{photo}");
    }
    assert_eq!(
        photos[2],
        json!({"index": 2, "name": "broken.jpg", "error": {"status": 400,
            "detail": "Please upload an image with one of the following formats: .jpg, .jpeg or .png"}})
    );
    // Each labelled photo carries exactly what /labelling/img would answer.
    let (status, single) = app.send(upload(Some(&key), &fixture("facade.jpg"))).await;
    assert_eq!(status, StatusCode::OK, "{single}");
    assert_eq!(photos[3]["Output"], parse(&single)["Output"]);
    let leaf = |i: usize| {
        let output = &photos[i]["Output"];
        output
            .get("Room_Subclass")
            .or_else(|| output.get("Room_Class"))
            .or_else(|| output.get("Scene_Class1"))
            .or_else(|| output.get("Image_Class"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let leaves: Vec<String> = [0, 1, 3, 4, 5, 6].map(leaf).to_vec();
    assert_eq!(
        leaves,
        ["kitchen", "bedroom", "facade", "kitchen", "other", "bathroom"]
    );
    assert_eq!(
        photos[3]["quality"],
        json!({"width": 576, "height": 384, "sharpness": photos[3]["quality"]["sharpness"],
               "brightness": photos[3]["quality"]["brightness"], "flags": ["small"]})
    );
    assert_eq!(photos[4]["quality"]["width"], 288);
    assert_eq!(
        photos[4]["duplicate_of"], 0,
        "the half-size copy points to the original"
    );
    for i in [0, 1, 3, 5, 6] {
        assert_eq!(photos[i]["duplicate_of"], Value::Null, "photo {i}");
    }

    assert_eq!(listing["order"], json!([3, 0, 4, 1, 6, 5]));
    assert_eq!(listing["cover"], 3);
    assert_eq!(listing["duplicates"], json!([[0, 4]]));
    assert_eq!(
        listing["inventory"],
        json!({"facade": 1, "kitchen": 1, "bedroom": 1, "bathroom": 1, "other": 1})
    );
    assert_eq!(
        listing["checks"],
        json!([
            {"code": "duplicates", "message": "1 photo is the same shot as another photo of the listing."},
            {"code": "low_quality", "message": "6 photos are too small, blurred, dark or overexposed to publish."}
        ])
    );

    // Six labelled photos, one call each; the broken one is not counted.
    let usage = credit(&app, &key).await;
    assert_eq!(
        usage["calls_by_endpoint"]["/labelling/listing"], 6,
        "{usage}"
    );
    assert_eq!(
        usage["calls_used"], 7,
        "six listing photos and the single call"
    );
}

async fn stand_in_app(edit: impl FnOnce(&mut photolabel_service::ServeArgs)) -> TestApp {
    AppBuilder::new()
        .args(edit)
        .build(FixedModel(indoor_probabilities()))
        .await
}

#[tokio::test]
async fn more_photos_than_the_cap_is_refused_and_costs_nothing() {
    let app = stand_in_app(|a| a.listing_max_photos = 2).await;
    let key = app.create_key("agency", None, None).await;
    let png = small_png();
    let body = multipart_photos(&[("a.png", &png), ("b.png", &png), ("c.png", &png)]);
    let (status, body) = app.send(listing_upload(Some(&key), body)).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            r#"{"detail":"A listing may have at most 2 photos"}"#
        )
    );
    let urls = json!({"urls": ["http://a/1.jpg", "http://a/2.jpg", "http://a/3.jpg"]});
    let (status, body) = app.send(listing_json(Some(&key), &urls.to_string())).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            r#"{"detail":"A listing may have at most 2 photos"}"#
        )
    );
    assert_eq!(credit(&app, &key).await["calls_used"], 0);

    // At the cap, both photos are labelled and counted.
    let body = multipart_photos(&[("a.png", &png), ("b.png", &png)]);
    let (status, body) = app.send(listing_upload(Some(&key), body)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        credit(&app, &key).await["calls_by_endpoint"]["/labelling/listing"],
        2
    );
}

#[tokio::test]
async fn the_listing_body_has_its_own_cap_and_each_photo_the_single_call_cap() {
    let app = stand_in_app(|a| {
        a.max_body_bytes = 64 * 1024;
        a.listing_max_bytes = 512 * 1024;
    })
    .await;
    let key = app.create_key("agency", None, None).await;
    let png = small_png();
    // A photo over the single-call cap fails alone; the listing answers.
    let big = vec![0u8; 100 * 1024];
    let body = multipart_photos(&[("big.jpg", &big), ("ok.png", &png)]);
    let (status, body) = app.send(listing_upload(Some(&key), body)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listing = parse(&body);
    assert_eq!(
        listing["photos"][0]["error"],
        json!({"status": 413, "detail": "The request body is larger than the limit of 65536 bytes"})
    );
    assert!(listing["photos"][1]["Output"].is_object(), "{body}");
    // A body over the listing cap is refused as a whole.
    let photos: Vec<Vec<u8>> = (0..10).map(|_| vec![0u8; 60 * 1024]).collect();
    let fields: Vec<(&str, &[u8])> = photos.iter().map(|p| ("x.jpg", p.as_slice())).collect();
    let (status, body) = app
        .send(listing_upload(Some(&key), multipart_photos(&fields)))
        .await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            r#"{"detail":"The request body is larger than the limit of 524288 bytes"}"#
        )
    );
}

#[tokio::test]
async fn malformed_listings_get_the_contracts_422() {
    let app = stand_in_app(|_| {}).await;
    let key = app.create_key("agency", None, None).await;
    let (status, body) = app
        .send(listing_upload(
            Some(&key),
            multipart_body("file", "a.jpg", "image/jpeg", b"x"),
        ))
        .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, IMAGE_422)
    );
    let urls_422 = r#"{"detail":[{"loc":["body","urls"],"msg":"field required","type":"value_error.missing"}]}"#;
    for bad in [
        r#"{"urls": []}"#,
        r#"{"urls": "http://a/b.jpg"}"#,
        r#"{"urls": [3]}"#,
        "{}",
        "nope",
    ] {
        let (status, body) = app.send(listing_json(Some(&key), bad)).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, urls_422),
            "{bad}"
        );
    }
    // Without a key, nothing is read.
    let (status, body) = app
        .send(listing_upload(
            None,
            multipart_photos(&[("a.png", &small_png())]),
        ))
        .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, MISSING_403)
    );
}

#[tokio::test]
async fn a_listing_where_no_photo_can_be_labelled_gets_the_first_photos_error() {
    let app = stand_in_app(|_| {}).await;
    let key = app.create_key("agency", None, None).await;
    let body = multipart_photos(&[("a.jpg", b"junk"), ("b.jpg", b"more junk")]);
    let (status, body) = app.send(listing_upload(Some(&key), body)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, IMAGE_400)
    );
    assert_eq!(credit(&app, &key).await["calls_used"], 0);
}

#[tokio::test]
async fn quota_and_rate_limit_count_photos() {
    let app = stand_in_app(|_| {}).await;
    let png = small_png();
    let three = || multipart_photos(&[("a.png", &png), ("b.png", &png), ("c.png", &png)]);

    let quota_key = app.create_key("quota", None, Some(2)).await;
    let (status, body) = app.send(listing_upload(Some(&quota_key), three())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listing = parse(&body);
    assert!(listing["photos"][1]["Output"].is_object(), "{body}");
    assert_eq!(
        listing["photos"][2]["error"],
        json!({"status": 429, "detail": "Quota exceeded: this key has used all of its 2 calls"})
    );
    assert_eq!(listing["order"], json!([0, 1]));
    assert_eq!(credit(&app, &quota_key).await["calls_used"], 2);

    let rate_key = app.create_key("rate", Some(2), None).await;
    let (status, body) = app.send(listing_upload(Some(&rate_key), three())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listing = parse(&body);
    assert_eq!(
        listing["photos"][2]["error"],
        json!({"status": 429, "detail": "Rate limit exceeded: this key may make 2 requests per minute"})
    );
    assert_eq!(credit(&app, &rate_key).await["calls_used"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_listing_refuses_private_addresses_photo_by_photo() {
    let tripwire = Tripwire::bind("127.0.0.1");
    let public = TestServer::start("127.0.0.2", serve_bytes(small_png(), "image/png")).await;
    let app = AppBuilder::new()
        .fetcher(fetcher_allowing(public.addr.ip()))
        .build(FixedModel(indoor_probabilities()))
        .await;
    let key = app.create_key("agency", None, None).await;
    let private = format!("http://127.0.0.1:{}/inside.jpg", tripwire.port());
    let good = public.url("/front.png");
    let urls = json!({"urls": [good, private, "http://169.254.169.254/latest/meta-data", "ftp://x/y.jpg"]});
    let (status, body) = app.send(listing_json(Some(&key), &urls.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listing = parse(&body);
    assert_eq!(listing["photos"][0]["name"], good.as_str());
    assert!(listing["photos"][0]["Output"].is_object(), "{body}");
    for i in 1..4 {
        assert_eq!(
            listing["photos"][i]["error"],
            json!({"status": 400, "detail": "The URL is not valid"}),
            "photo {i}: {body}"
        );
    }
    assert_eq!(listing["photos"][1]["name"], private.as_str());
    assert_eq!(tripwire.connections(), 0, "no connection reached loopback");
    assert_eq!(public.hits(), vec!["/front.png"]);
    assert_eq!(
        credit(&app, &key).await["calls_by_endpoint"]["/labelling/listing"],
        1
    );
}

/// With the only replica busy on a listing photo and more of the listing
/// queued, a single call that arrives is the next photo labelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_calls_go_before_queued_listing_photos() {
    let (model, mut gate) = gate_model(indoor_probabilities());
    let app = AppBuilder::new().build(model).await;
    let key = app.create_key("agency", None, None).await;
    // Listing photos report their width (32 px); a single call's photo is
    // not measured and reports 0.
    let listing_png = png_of_width(32);
    let body = multipart_photos(&[("a.png", listing_png.as_slice()); 4]);
    let listing = tokio::spawn(app.send_owned(listing_upload(Some(&key), body)));
    assert_eq!(
        gate.entered.recv().await,
        Some(32),
        "a listing photo is in the model"
    );
    // The listing's second photo is decoded and queued meanwhile; wait for
    // it, then for the single call to be queued too.
    while app.state.worker.waiting() < 1 {
        tokio::task::yield_now().await;
    }
    let single = tokio::spawn(app.send_owned(upload(Some(&key), &small_png())));
    while app.state.worker.waiting() < 2 {
        tokio::task::yield_now().await;
    }
    gate.release
        .send(())
        .expect("release the first listing photo");
    assert_eq!(
        gate.entered.recv().await,
        Some(0),
        "the single call went next"
    );
    for _ in 0..4 {
        gate.release.send(()).expect("release");
    }
    let (status, body) = single.await.expect("single call");
    assert_eq!((status, body.as_str()), (StatusCode::OK, INDOOR_BODY));
    let (status, body) = listing.await.expect("listing");
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut order = Vec::new();
    while let Ok(width) = gate.entered.try_recv() {
        order.push(width);
    }
    assert_eq!(order, [32, 32, 32], "the rest of the listing followed");
}
