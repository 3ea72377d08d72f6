//! The URL schemes plaid reads and writes: the one list that opening, writing, converting
//! and the remote clients ask (whether or not the `remote` feature is built).

/// The kind of store a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// `http://`, `https://`.
    Http,
    /// `s3://`, `s3a://`.
    S3,
    /// `gs://`.
    Gcs,
    /// `az://`, `azure://`.
    Azure,
}

/// Every scheme plaid takes, by its name before `://`.
const SCHEMES: [(&str, Scheme); 7] = [
    ("http", Scheme::Http),
    ("https", Scheme::Http),
    ("s3", Scheme::S3),
    ("s3a", Scheme::S3),
    ("gs", Scheme::Gcs),
    ("az", Scheme::Azure),
    ("azure", Scheme::Azure),
];

/// The store a scheme name (`"s3"`, lower case, without `://`) names, if plaid takes it.
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
pub(crate) fn scheme(name: &str) -> Option<Scheme> {
    SCHEMES.iter().find(|(n, _)| *n == name).map(|&(_, s)| s)
}

/// Whether `text` is a URL of remote storage rather than a local path: one of the schemes
/// plaid takes (any case) followed by `://`.
pub fn is_url(text: &str) -> bool {
    let Some((name, _)) = text.split_once("://") else {
        return false;
    };
    name.len() <= 5 && scheme(&name.to_ascii_lowercase()).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_and_nothing_else_is_a_url() {
        for url in [
            "http://h/x",
            "HTTPS://h/x",
            "s3://b/k",
            "s3a://b/k",
            "gs://b/k",
            "az://c/k",
            "azure://c/k",
        ] {
            assert!(is_url(url), "{url}");
        }
        for path in [
            "model.plaid",
            "/tmp/s3://x",
            "file:///x",
            "ftp://h/x",
            "s3:/b/k",
            "",
        ] {
            assert!(!is_url(path), "{path}");
        }
        assert_eq!(scheme("azure"), Some(Scheme::Azure));
        assert_eq!(scheme("ftp"), None);
    }
}
