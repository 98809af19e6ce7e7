//! Bodies stream through: 200 MB each way with the proxy's resident memory nearly flat.

use http::Request;
use http_body_util::BodyExt;

use crate::support::*;

const SIZE: u64 = 200 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_megabytes_up_and_down_with_flat_memory() {
    let sink = Backend::start("sink", Behavior::CountBody).await;
    let source = Backend::start("source", Behavior::Stream(SIZE)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[routers.up]
path = "/upload"
service = "sink"
# The default body limit is 100 MiB; this router takes more.
max_body_bytes = "1GiB"
[routers.down]
path = "/download"
service = "source"
[services.sink]
backends = [{{ url = "{}" }}]
[services.source]
backends = [{{ url = "{}" }}]
"#,
            sink.url(),
            source.url()
        ),
    )
    .unwrap();
    let p = GantryProcess::spawn(&["run", "--config", path.to_str().unwrap()]);
    let c = client();
    // Warm up: one small request, so that the baseline includes a live connection and pool.
    assert_eq!(get(&c, p.addr, "h", "/download-none").await.status, 404);
    let baseline_kib = p.status_kib("VmRSS:");

    let req = Request::post(format!("http://{}/upload", p.addr))
        .header("host", "h")
        .body(TestBody::zeros(SIZE))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        SIZE.to_string(),
        "the backend got every uploaded byte"
    );

    let req = Request::get(format!("http://{}/download", p.addr))
        .header("host", "h")
        .body(TestBody::full(""))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, SIZE, "the client got every downloaded byte");

    let peak_kib = p.status_kib("VmHWM:");
    let growth_mib = peak_kib.saturating_sub(baseline_kib) as f64 / 1024.0;
    assert!(
        growth_mib < 32.0,
        "resident memory grew by {growth_mib:.1} MiB while streaming 2 x 200 MB"
    );
}
