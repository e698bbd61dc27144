//! The small HTTP calls several test files make to a latchkey server.

/// The value of header `name` ("" when absent).
pub fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .map(|v| v.to_str().expect("an ASCII header value"))
        .unwrap_or_default()
}

/// `POST <url>` of the form `form` with `key` as the Basic password (client
/// `client`): a token request.
pub async fn post_token(url: &str, key: &str, form: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .basic_auth("client", Some(key))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned())
        .send()
        .await
        .unwrap()
}

/// The body of `GET <url>` (e.g. `/metrics`).
pub async fn get_text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}
