//! Test support: a scripted HTTP/1.1 responder on 127.0.0.1:0, for unit tests of the retry loop.
//!
//! A script decides, per request, to answer, to hang (hold the connection without answering
//! until the client gives up) or to close the connection after reading the request. Every
//! request is recorded. Requests on one connection are served in order (keep-alive).
//!
//! Left out: anything a real node does; chunked request bodies (the client always sends a
//! length); TLS.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

use tokio::io::AsyncReadExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Largest request head the responder reads; tests never come close.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Largest request body the responder reads.
const BODY_BYTES_MAX: usize = 2 * 1024 * 1024;

/// What to do with one request.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Never answer; wait until the client closes the connection.
    Hang,
    /// Close the connection without answering.
    Close,
}

impl Step {
    pub(crate) fn json(status: u16, body: &str) -> Step {
        Step::Respond {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    pub(crate) fn error(status: u16, code: &str) -> Step {
        Step::json(
            status,
            &format!(r#"{{"error":"{code}","message":"scripted {code}"}}"#),
        )
    }

    pub(crate) fn with_header(mut self, name: &str, value: &str) -> Step {
        if let Step::Respond { headers, .. } = &mut self {
            headers.push((name.to_string(), value.to_string()));
        }
        self
    }
}

/// One request as received.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

type Script = Arc<dyn Fn(&Recorded, usize) -> Step + Send + Sync>;

pub(crate) struct Responder {
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl Responder {
    /// Answers request `i` with `steps[i]`, and every request past the end with the last step.
    pub(crate) async fn scripted(steps: Vec<Step>) -> Responder {
        assert!(!steps.is_empty(), "a script needs at least one step");
        Self::with(move |_, i| steps[i.min(steps.len() - 1)].clone()).await
    }

    /// Answers each request with `script(request, index)`.
    pub(crate) async fn with(
        script: impl Fn(&Recorded, usize) -> Step + Send + Sync + 'static,
    ) -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(script);
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve(stream, script.clone(), recorded.clone()));
            }
        });
        Responder {
            url,
            requests,
            task,
        }
    }

    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

/// An endpoint that refuses connections: a port that was just bound and released.
pub(crate) async fn refusing_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    drop(listener);
    url
}

async fn serve(mut stream: TcpStream, script: Script, requests: Arc<Mutex<Vec<Recorded>>>) {
    let mut buffer = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buffer).await {
        let index = {
            let mut requests = requests.lock().unwrap_or_else(PoisonError::into_inner);
            requests.push(request.clone());
            requests.len() - 1
        };
        match script(&request, index) {
            Step::Respond {
                status,
                headers,
                body,
            } => {
                let mut head = format!(
                    "HTTP/1.1 {status} Scripted\r\ncontent-length: {}\r\n",
                    body.len()
                );
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                let mut answer = head.into_bytes();
                answer.extend_from_slice(&body);
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
            }
            Step::Hang => {
                // Wait for the client to give up and close; anything it sends is ignored.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            Step::Close => return,
        }
    }
}

/// Reads one request; `None` at end of stream or on anything malformed.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Recorded> {
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > HEAD_BYTES_MAX {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if length > BODY_BYTES_MAX {
        return None;
    }
    let body_start = head_end + 4;
    while buffer.len() < body_start + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[body_start..body_start + length].to_vec();
    buffer.drain(..body_start + length);
    Some(Recorded {
        method,
        path,
        headers,
        body,
    })
}
