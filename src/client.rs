//! `gifts import FILE`: uploads an import to a running service, with a
//! progress bar on a terminal, and prints one line with the result — or the
//! service's error, field and citizen, readably.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde::de::{IgnoredAny, SeqAccess, Visitor};

/// Bodies at least this large are sent gzip-compressed (about 10× smaller).
const GZIP_FROM: usize = 64 * 1024;
/// Bytes per body frame, and so per progress-bar step.
const CHUNK: usize = 256 * 1024;

/// Uploads `file` (`-` for standard input) to `{base}/imports`, with
/// `token` as a bearer token if given; prints the result and returns the
/// process exit code: 0 when stored, 1 otherwise.
pub async fn import(file: &Path, base: &str, timeout: Duration, token: Option<&str>) -> i32 {
    match run(file, base, timeout, token).await {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn run(
    file: &Path,
    base: &str,
    timeout: Duration,
    token: Option<&str>,
) -> anyhow::Result<String> {
    let body = read_input(file)?;
    let count = count_citizens(&body);
    let base = base.trim_end_matches('/');
    if !base.starts_with("http://") {
        bail!("--url must be a plain http:// address (this client speaks no TLS), got {base}");
    }
    let url = format!("{base}/imports");
    let started = Instant::now();
    let work = async {
        if body.len() >= GZIP_FROM {
            let compressed = gzip(&body)?;
            let response = send(&url, compressed, true, token).await?;
            // A service that does not take gzip says 415: send it plain.
            if response.0 != StatusCode::UNSUPPORTED_MEDIA_TYPE {
                return Ok(response);
            }
        }
        send(&url, Bytes::from(body), false, token).await
    };
    let (status, answer) = tokio::time::timeout(timeout, work)
        .await
        .with_context(|| format!("no answer from {url} within {} s", timeout.as_secs()))??;
    let seconds = started.elapsed().as_secs_f64();
    let json: serde_json::Value = serde_json::from_slice(&answer).with_context(|| {
        format!(
            "{status} from {url}, and the answer is not JSON: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(300)])
        )
    })?;
    if status == StatusCode::CREATED {
        let id = json["data"]["import_id"]
            .as_i64()
            .with_context(|| format!("201 without an import_id: {json}"))?;
        let citizens = count.map_or_else(
            || "its citizens".to_owned(),
            |n| format!("{} citizen{}", thousands(n), if n == 1 { "" } else { "s" }),
        );
        return Ok(format!("import {id}: {citizens} stored in {seconds:.2} s"));
    }
    bail!("{}", describe_error(status, &json))
}

fn read_input(file: &Path) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut body)
            .context("cannot read standard input")?;
    } else {
        body = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    }
    Ok(body)
}

/// The service's error answer as lines a person reads: what, where, why.
fn describe_error(status: StatusCode, json: &serde_json::Value) -> String {
    let error = &json["error"];
    let code = error["code"].as_str().unwrap_or("?");
    let message = error["message"].as_str().unwrap_or("(no message)");
    let mut text = format!("the service answered {status} ({code}): {message}");
    if let Some(field) = error["field"].as_str().filter(|f| !f.is_empty()) {
        let _ = write!(text, "\n  field:   {field}");
    }
    if let Some(citizen) = error["citizen_id"].as_u64() {
        let _ = write!(text, "\n  citizen: {citizen}");
    }
    match status {
        StatusCode::UNAUTHORIZED => text.push_str(
            "\n  the service needs an access token: pass --token TOKEN or set GIFTS_TOKEN (one with the `write` scope)",
        ),
        StatusCode::FORBIDDEN => {
            text.push_str("\n  the token lacks the `write` scope (see `gifts token new --help`)");
        }
        _ => {}
    }
    text
}

/// How many citizens the body lists, if it is shaped like an import.
fn count_citizens(body: &[u8]) -> Option<u64> {
    struct Count(u64);
    impl<'de> Deserialize<'de> for Count {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct CountingVisitor;
            impl<'de> Visitor<'de> for CountingVisitor {
                type Value = u64;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a list")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
                    let mut n = 0;
                    while seq.next_element::<IgnoredAny>()?.is_some() {
                        n += 1;
                    }
                    Ok(n)
                }
            }
            d.deserialize_seq(CountingVisitor).map(Count)
        }
    }
    #[derive(Deserialize)]
    struct Import {
        citizens: Count,
    }
    serde_json::from_slice::<Import>(body)
        .ok()
        .map(|i| i.citizens.0)
}

fn gzip(body: &[u8]) -> anyhow::Result<Bytes> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    encoder.write_all(body)?;
    Ok(Bytes::from(encoder.finish()?))
}

/// `10000` → `10,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

async fn send(
    url: &str,
    body: Bytes,
    gzipped: bool,
    token: Option<&str>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let bar = ProgressBar::new(body.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:9} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message("uploading");
    let mut request = Request::post(url)
        .header("content-type", "application/json")
        .header("content-length", body.len());
    if gzipped {
        request = request.header("content-encoding", "gzip");
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Upload {
        data: body,
        bar: bar.clone(),
    })?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Upload>();
    let response = client
        .request(request)
        .await
        .with_context(|| format!("cannot reach the service at {url}"))?;
    bar.finish_and_clear();
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .context("the connection broke while reading the answer")?
        .to_bytes();
    Ok((status, answer))
}

/// What the bar shows once the whole body is sent.
const WAITING: &str = "stored by the service…";

/// Turns the upload bar into a spinner with the time it has waited.
fn waiting(bar: &ProgressBar) {
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
    );
    bar.set_message(WAITING);
    bar.enable_steady_tick(Duration::from_millis(120));
}

/// A request body sent in chunks, advancing a progress bar.
struct Upload {
    data: Bytes,
    bar: ProgressBar,
}

impl hyper::body::Body for Upload {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.data.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.data.len().min(CHUNK);
        let chunk = self.data.split_to(n);
        self.bar.inc(n as u64);
        if self.data.is_empty() {
            // All sent; hyper asks for no more frames. What remains is the
            // service's work: say so, rather than a full bar standing still.
            waiting(&self.bar);
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.data.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_the_body_is_sent_the_bar_says_the_service_is_storing_it() {
        use hyper::body::Body;
        let bar = ProgressBar::hidden();
        let mut upload = Upload {
            data: Bytes::from(vec![b' '; CHUNK + 10]),
            bar: bar.clone(),
        };
        let waker = std::task::Waker::noop();
        let mut cx = TaskContext::from_waker(waker);
        let mut frames = 0;
        while let Poll::Ready(Some(Ok(_))) = Pin::new(&mut upload).poll_frame(&mut cx) {
            frames += 1;
            if !upload.is_end_stream() {
                assert_ne!(bar.message(), WAITING, "still sending");
            }
        }
        assert_eq!(frames, 2);
        assert_eq!(bar.message(), WAITING);
        assert_eq!(bar.position(), (CHUNK + 10) as u64);
    }

    #[test]
    fn counts_and_numbers_read_well() {
        assert_eq!(count_citizens(br#"{"citizens": [{}, 1, []]}"#), Some(3));
        assert_eq!(count_citizens(b"not json"), None);
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn errors_name_the_field_and_the_citizen() {
        let json = serde_json::json!({"error": {"code": "not_a_calendar_date",
            "message": "citizens[1].birth_date (citizen 2): 31.02.2019 is not a calendar date",
            "field": "citizens[1].birth_date", "citizen_id": 2}});
        let text = describe_error(StatusCode::BAD_REQUEST, &json);
        assert!(
            text.contains("400 Bad Request (not_a_calendar_date)"),
            "{text}"
        );
        assert!(text.contains("field:   citizens[1].birth_date"), "{text}");
        assert!(text.contains("citizen: 2"), "{text}");
    }
}
