//! A Google user's refresh token (`"type": "authorized_user"`, what
//! `gcloud auth application-default login` writes): the refresh-token grant
//! to `token_uri` (Google's endpoint unless the file names one, which
//! Go's and Rust's Google libraries honour and tests need).

use std::fmt;
use std::time::SystemTime;

use zeroize::Zeroizing;

use super::{Mint, MintFuture, oauth};
use crate::upstream::Client;

/// Google's token endpoint.
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// The fields of an `authorized_user` file.
#[derive(serde::Deserialize)]
struct UserJson {
    client_id: String,
    client_secret: Zeroizing<String>,
    refresh_token: Zeroizing<String>,
    token_uri: Option<String>,
}

/// A refresh token and the OAuth client it belongs to.
pub(crate) struct AuthorizedUser {
    client_id: String,
    client_secret: Zeroizing<String>,
    refresh_token: Zeroizing<String>,
    token_uri: String,
}

impl AuthorizedUser {
    /// Parses an `authorized_user` JSON.
    ///
    /// # Errors
    ///
    /// What is missing, never a value.
    pub(crate) fn parse(json: &[u8]) -> Result<Self, String> {
        let u: UserJson = serde_json::from_slice(json).map_err(|e| {
            format!(
                "is not an authorized_user JSON ({}; it needs client_id, client_secret and refresh_token)",
                super::jwt::json_error_kind(&e)
            )
        })?;
        Ok(Self {
            client_id: u.client_id,
            client_secret: u.client_secret,
            refresh_token: u.refresh_token,
            token_uri: u.token_uri.unwrap_or_else(|| GOOGLE_TOKEN_URI.to_owned()),
        })
    }
}

impl fmt::Debug for AuthorizedUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Mint for AuthorizedUser {
    fn kind(&self) -> &'static str {
        "authorized-user"
    }

    fn describe(&self) -> String {
        format!(
            "authorized user (OAuth client {}, at {})",
            self.client_id, self.token_uri
        )
    }

    fn mint<'a>(&'a self, client: &'a Client, _now: SystemTime) -> MintFuture<'a> {
        Box::pin(async move {
            let req = oauth::form_post(
                &self.token_uri,
                &[
                    ("grant_type", "refresh_token"),
                    ("client_id", &self.client_id),
                    ("client_secret", &self.client_secret),
                    ("refresh_token", &self.refresh_token),
                ],
            )?;
            oauth::exchange(client, req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_never_shows_the_secrets() {
        let u = AuthorizedUser::parse(
            br#"{"type":"authorized_user","client_id":"123.apps.googleusercontent.com","client_secret":"shh","refresh_token":"1//rt-secret"}"#,
        )
        .unwrap();
        assert_eq!(u.token_uri, GOOGLE_TOKEN_URI);
        let shown = format!("{u:?}");
        assert!(
            !shown.contains("shh") && !shown.contains("rt-secret"),
            "{shown}"
        );
        let err = AuthorizedUser::parse(
            br#"{"type":"authorized_user","refresh_token":["1//rt-secret"]}"#,
        )
        .unwrap_err();
        assert!(!err.contains("rt-secret"), "{err}");
    }
}
