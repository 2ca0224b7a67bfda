//! Secrets never reach a message: the user info of every URL in a text
//! (`http://user:secret@host/…` → `http://***@host/…`) is masked before the
//! text is shown, whether it came from a manifest value (a `with.endpoint`
//! diff) or from a library's error (which prints the URL it was given).

/// `text` with the user info of every `SCHEME://USER[:PASSWORD]@HOST` masked.
pub fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || "/?#\"'`<>,;".contains(c))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***@");
                out.push_str(&authority[at + 1..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_userinfo;

    #[test]
    fn masks_user_info_of_every_url() {
        assert_eq!(
            redact_userinfo(
                "GET http://user:s3cr%40t@127.0.0.1:9/b/k failed; see https://x.org/a@b"
            ),
            "GET http://***@127.0.0.1:9/b/k failed; see https://x.org/a@b"
        );
        assert_eq!(
            redact_userinfo("`s3://key@bucket` and http://[::1]:9000"),
            "`s3://***@bucket` and http://[::1]:9000"
        );
        assert_eq!(redact_userinfo("no url: a@b"), "no url: a@b");
    }
}
