//! A fake registry: an HTTP/1.1 server on a free loopback port that answers each request (one
//! per connection) with a handler's [`Answer`] and records each request it was asked, its body
//! read whole whether sized or chunked. It is the one fake registry of the tests: the registry
//! adapter's unit tests include this file by path, the end-to-end tests through `mod common`. It uses only the standard library for that reason.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One request as the fake registry saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// A query parameter, percent-decoded.
    pub fn query(&self, key: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| pair.strip_prefix(&format!("{key}="))).map(percent_decode)
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// An answer of the fake registry. To a HEAD, the body is left out and its length still sent.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub fn answer(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Answer {
    Answer {
        status,
        headers: headers.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect(),
        body: body.into(),
    }
}

/// Starts a fake registry answering with `handler`, which also gets the server's `host:port`;
/// returns that `host:port` and the requests seen, in order.
pub fn serve(handler: impl Fn(&Seen, &str) -> Answer + Send + 'static) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let server_host = host.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if let Some(request) = read_request(&stream) {
                let reply = handler(&request, &server_host);
                let head = request.method == "HEAD";
                log.lock().unwrap().push(request);
                write_answer(stream, &reply, head);
            }
        }
    });
    (host, seen)
}

fn read_request(stream: &TcpStream) -> Option<Seen> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (key, value) = line.split_once(':')?;
        headers.push((key.trim().to_string(), value.trim().to_string()));
    }
    let mut seen = Seen { method, target, headers, body: Vec::new() };
    if seen.header("transfer-encoding").is_some_and(|value| value.eq_ignore_ascii_case("chunked")) {
        // A streamed body (a blob copy's upload): chunks of hex size, CRLF, data, CRLF; then 0.
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut crlf = String::new();
            if size == 0 {
                reader.read_line(&mut crlf).ok()?;
                break;
            }
            let start = seen.body.len();
            seen.body.resize(start + size, 0);
            reader.read_exact(&mut seen.body[start..]).ok()?;
            reader.read_line(&mut crlf).ok()?;
        }
        return Some(seen);
    }
    let length: usize = seen.header("content-length").and_then(|value| value.parse().ok()).unwrap_or(0);
    seen.body.resize(length, 0);
    reader.read_exact(&mut seen.body).ok()?;
    Some(seen)
}

fn write_answer(mut stream: TcpStream, answer: &Answer, head: bool) {
    let mut text =
        format!("HTTP/1.1 {} Fake\r\nConnection: close\r\nContent-Length: {}\r\n", answer.status, answer.body.len());
    for (key, value) in &answer.headers {
        text.push_str(&format!("{key}: {value}\r\n"));
    }
    text.push_str("\r\n");
    let _ = stream.write_all(text.as_bytes());
    if !head {
        let _ = stream.write_all(&answer.body);
    }
}
