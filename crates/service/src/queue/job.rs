//! What travels through the queue: a job (`{"id", "url"}`) into the jobs
//! stream, a result (`{"id", "Output"}` or `{"id", "error"}`) out of the
//! results stream, and the error kinds a result may carry.

use photolabel_taxonomy::Label;
use serde::{Deserialize, Serialize};

/// Longest job id accepted, in bytes. The id travels as the `Nats-Msg-Id`
/// header, so it must also be a valid header value (no control characters).
pub const MAX_ID_LEN: usize = 512;

/// One photo to label: a caller-chosen id, unique per photo, and its URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub url: String,
}

/// Why a line of the jobs file (or a job message) is not a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("not a JSON object with string fields `id` and `url`: {0}")]
    Json(String),
    #[error("not a CSV row `id,url`: {0}")]
    Csv(String),
    #[error("the id is empty")]
    EmptyId,
    #[error("the id is longer than {MAX_ID_LEN} bytes")]
    IdTooLong,
    #[error("the id contains a control character")]
    IdControl,
    #[error("the url is empty")]
    EmptyUrl,
}

impl Job {
    /// Checks what the queue needs of a job: an id that can be a message id
    /// and a non-empty URL. (The URL itself is checked by the worker's
    /// fetcher, which turns a bad one into a `url_refused` result.)
    pub fn validate(self) -> Result<Job, JobError> {
        if self.id.is_empty() {
            return Err(JobError::EmptyId);
        }
        if self.id.len() > MAX_ID_LEN {
            return Err(JobError::IdTooLong);
        }
        if self.id.chars().any(char::is_control) {
            return Err(JobError::IdControl);
        }
        if self.url.trim().is_empty() {
            return Err(JobError::EmptyUrl);
        }
        Ok(self)
    }

    /// A job message's payload.
    pub fn from_json(bytes: &[u8]) -> Result<Job, JobError> {
        serde_json::from_slice::<Job>(bytes)
            .map_err(|e| JobError::Json(e.to_string()))?
            .validate()
    }
}

/// One line of a jobs file: a job, nothing (blank line, CSV header), or why
/// it is not a job.
///
/// A line starting with `{` is JSON (`{"id": "…", "url": "…"}`, other fields
/// ignored); any other is a CSV row `id,url` (quoted fields allowed, so a URL
/// with a comma can be quoted). A row `id,url` is a header and skipped.
pub fn parse_line(line: &str) -> Result<Option<Job>, JobError> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    if line.starts_with('{') {
        return serde_json::from_str::<Job>(line)
            .map_err(|e| JobError::Json(e.to_string()))?
            .validate()
            .map(Some);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(line.as_bytes());
    let record = match reader.records().next() {
        Some(Ok(record)) => record,
        Some(Err(e)) => return Err(JobError::Csv(e.to_string())),
        None => return Ok(None),
    };
    if record.len() != 2 {
        return Err(JobError::Csv(format!(
            "{} fields, expected 2 (id,url)",
            record.len()
        )));
    }
    let (id, url) = (record[0].trim(), record[1].trim());
    if id.eq_ignore_ascii_case("id") && url.eq_ignore_ascii_case("url") {
        return Ok(None);
    }
    Job {
        id: id.to_owned(),
        url: url.to_owned(),
    }
    .validate()
    .map(Some)
}

/// Why a job got an error result instead of labels. Serialised in
/// snake_case; these strings are part of the results' format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Permanent: the URL is malformed, not http(s), carries credentials,
    /// points at a forbidden (private, loopback, …) address, or redirects
    /// badly or too often. No connection was made to a forbidden address.
    UrlRefused,
    /// Permanent: the server answered 404 or 410.
    NotFound,
    /// Permanent: another 4xx answer (not 408 or 429).
    HttpStatus,
    /// Permanent: the body is larger than `--url-max-bytes`.
    TooLarge,
    /// Permanent: the body is not a decodable JPEG, PNG or WebP, or the
    /// image is larger than `--max-pixels`.
    NotAnImage,
    /// Transient, retried: the download took longer than `--url-timeout`.
    Timeout,
    /// Transient, retried: 5xx, 408 or 429.
    ServerError,
    /// Transient, retried: the host did not resolve, or the connection
    /// failed or broke off.
    Unreachable,
    /// Transient, retried: the model failed on the photo.
    Internal,
    /// Delivered more than twice `--max-deliver` times: the workers
    /// holding it stopped (killed, crashed) again and again.
    Abandoned,
    /// The job message itself is not a job (written by hand, not by
    /// `enqueue`); its id is the message's `Nats-Msg-Id`, or `seq:N`.
    InvalidJob,
}

impl ErrorKind {
    /// Whether another attempt may succeed (then the job is retried up to
    /// `--max-deliver` times before it gets the error result).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout
                | ErrorKind::ServerError
                | ErrorKind::Unreachable
                | ErrorKind::Internal
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::UrlRefused => "url_refused",
            ErrorKind::NotFound => "not_found",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::NotAnImage => "not_an_image",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ServerError => "server_error",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Internal => "internal",
            ErrorKind::Abandoned => "abandoned",
            ErrorKind::InvalidJob => "invalid_job",
        }
    }
}

/// A failed job: its kind and a sentence for people.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub kind: ErrorKind,
    pub detail: String,
}

/// One line of the results: the labels (the `Output` object
/// `/labelling/img` returns) or an error.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobResult {
    pub id: String,
    #[serde(rename = "Output", skip_serializing_if = "Option::is_none")]
    pub output: Option<Label>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

impl JobResult {
    pub fn labelled(id: String, label: Label) -> Self {
        JobResult {
            id,
            output: Some(label),
            error: None,
        }
    }

    pub fn failed(id: String, kind: ErrorKind, detail: impl Into<String>) -> Self {
        JobResult {
            id,
            output: None,
            error: Some(Failure {
                kind,
                detail: detail.into(),
            }),
        }
    }
}

/// Just the id of a result line (what `collect` needs to drop doubles).
#[derive(Debug, Deserialize)]
pub struct ResultId {
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, url: &str) -> Option<Job> {
        Some(Job {
            id: id.into(),
            url: url.into(),
        })
    }

    #[test]
    fn json_and_csv_lines() {
        assert_eq!(
            parse_line(r#"{"id": "a1", "url": "https://x/1.jpg", "extra": 3}"#),
            Ok(job("a1", "https://x/1.jpg"))
        );
        assert_eq!(
            parse_line("b2,https://x/2.jpg"),
            Ok(job("b2", "https://x/2.jpg"))
        );
        assert_eq!(
            parse_line(r#""c,3","https://x/a,b.jpg""#),
            Ok(job("c,3", "https://x/a,b.jpg"))
        );
        assert_eq!(parse_line("id,url"), Ok(None));
        assert_eq!(parse_line("   "), Ok(None));
    }

    #[test]
    fn malformed_lines() {
        assert!(matches!(parse_line("{\"id\": 1}"), Err(JobError::Json(_))));
        assert!(matches!(parse_line("{not json"), Err(JobError::Json(_))));
        assert!(matches!(
            parse_line("just-one-field"),
            Err(JobError::Csv(_))
        ));
        assert!(matches!(parse_line("a,b,c"), Err(JobError::Csv(_))));
        assert_eq!(parse_line(",https://x"), Err(JobError::EmptyId));
        assert_eq!(parse_line("a,"), Err(JobError::EmptyUrl));
        let long = format!("{},https://x", "i".repeat(MAX_ID_LEN + 1));
        assert_eq!(parse_line(&long), Err(JobError::IdTooLong));
        assert_eq!(
            parse_line(r#"{"id": "a\u0001", "url": "https://x"}"#),
            Err(JobError::IdControl)
        );
    }

    #[test]
    fn result_lines() {
        let failed = JobResult::failed("x".into(), ErrorKind::NotFound, "server answered 404");
        assert_eq!(
            serde_json::to_string(&failed).expect("json"),
            r#"{"id":"x","error":{"kind":"not_found","detail":"server answered 404"}}"#
        );
        for kind in [ErrorKind::UrlRefused, ErrorKind::ServerError] {
            assert_eq!(
                serde_json::to_value(kind).expect("json"),
                serde_json::Value::String(kind.as_str().into())
            );
        }
        assert!(ErrorKind::Timeout.is_transient());
        assert!(!ErrorKind::NotAnImage.is_transient());
    }
}
