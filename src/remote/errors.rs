//! Remote failures as plaid errors whose messages name the URL, the byte range, the HTTP
//! status and the store's error code (`AccessDenied`, `NoSuchKey`, ...): a missing object
//! is [`Error::NotFound`], everything else [`Error::Io`].

use std::ops::Range;

use crate::error::Error;

/// `first-last` (inclusive, as HTTP writes ranges).
pub(crate) fn span(range: &Range<u64>) -> String {
    if range.is_empty() {
        format!("{}-", range.start)
    } else {
        format!("{}-{}", range.start, range.end - 1)
    }
}

/// What a chain of errors says: every message, without the repeats that wrapping
/// errors make by quoting their source.
fn chain(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut messages: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        messages.push(e.to_string());
        next = e.source();
    }
    // Keep a message only where no outer one already contains it.
    let mut kept: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if !messages[..i].iter().any(|outer| outer.contains(m.as_str())) {
            kept.push(m.clone());
        }
    }
    kept
}

/// The text between `<tag>` and `</tag>` in an XML error body.
fn xml_field<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&close)?;
    Some(text[start..end].trim())
}

/// The HTTP status a message reports, from object_store's "status code: 403 Forbidden".
fn http_status(text: &str) -> Option<String> {
    let at = text.find("status code: ")? + "status code: ".len();
    let rest = &text[at..];
    let code: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if code.len() != 3 {
        return None;
    }
    // The reason phrase, up to the body.
    let reason: String = rest[3..]
        .trim_start()
        .chars()
        .take_while(|&c| c != ':' && c != '<' && c != '\n')
        .collect();
    Some(format!("{code} {}", reason.trim()).trim().to_owned())
}

/// A description of `error`: the HTTP status and store error code first, then the
/// store's message (without the XML around it), then the underlying cause.
fn summary(error: &object_store::Error) -> (String, Option<String>) {
    let messages = chain(error);
    let all = messages.join(": ");
    let status = http_status(&all);
    let code = xml_field(&all, "Code")
        .map(str::to_owned)
        .or_else(|| {
            // Azure and GCS put the code in JSON or a header-like line.
            all.find("\"code\":").map(|at| {
                all[at + 7..]
                    .trim_start()
                    .trim_start_matches('"')
                    .chars()
                    .take_while(|&c| c != '"' && c != ',' && c != '}')
                    .collect()
            })
        })
        .filter(|c: &String| !c.is_empty());
    let message = xml_field(&all, "Message").map(str::to_owned);
    let mut parts = Vec::new();
    if let Some(status) = &status {
        parts.push(format!("HTTP {status}"));
    }
    if let Some(code) = &code {
        parts.push(format!("error code {code}"));
    }
    if let Some(message) = message {
        parts.push(message);
    }
    if status.is_none() {
        // No answer from the server: say what failed (connect, timeout, reset).
        let cause = messages
            .iter()
            .rev()
            .find(|m| !m.trim().is_empty())
            .cloned()
            .unwrap_or_else(|| error.to_string());
        parts.push(cause);
        if let Some(first) = messages.first() {
            if !parts.iter().any(|p| first.contains(p.as_str())) && first.len() < 400 {
                parts.push(first.clone());
            }
        }
    }
    (parts.join(", "), code)
}

/// What was being done: "`doing` bytes `first-last` of `url`", or "`doing` `url`".
pub(crate) fn context(url: &str, range: Option<&Range<u64>>, doing: &str) -> String {
    match range {
        Some(range) => format!("{doing} bytes {} of {url}", span(range)),
        None => format!("{doing} {url}"),
    }
}

/// The plaid error for `error`, met while `doing` ("opening", "reading", "writing") `url`
/// (at `range`, where one was asked for).
pub(crate) fn describe(
    error: object_store::Error,
    url: &str,
    range: Option<&Range<u64>>,
    doing: &str,
) -> Error {
    let context = context(url, range, doing);
    let (text, code) = summary(&error);
    match error {
        object_store::Error::NotFound { .. } => Error::NotFound(format!(
            "{context}: no such object ({})",
            if text.is_empty() { "HTTP 404" } else { &text }
        )),
        object_store::Error::Precondition { .. } => Error::io(
            context,
            std::io::Error::other(format!("the object changed since it was opened ({text})")),
        ),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => Error::io(
            context,
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, text),
        ),
        _ if code.as_deref() == Some("NoSuchKey") || code.as_deref() == Some("NoSuchBucket") => {
            Error::NotFound(format!("{context}: no such object ({text})"))
        }
        _ => Error::io(context, std::io::Error::other(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_statuses_are_found() {
        let body = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?>\
                    <Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        assert_eq!(http_status(body).as_deref(), Some("403 Forbidden"));
        assert_eq!(xml_field(body, "Code"), Some("AccessDenied"));
        assert_eq!(xml_field(body, "Message"), Some("Access Denied"));
        assert_eq!(http_status("status code: 5"), None);
        assert_eq!(span(&(0..10)), "0-9");
    }
}
