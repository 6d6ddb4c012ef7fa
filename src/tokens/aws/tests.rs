use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::env::MapEnv;

fn env(vars: &[(&str, &str)]) -> MapEnv {
    MapEnv::new(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
}

fn chosen(vars: &[(&str, &str)]) -> Result<String, String> {
    chain::select(&env(vars), "eu-west-1").map(|s| s.source.describe())
}

#[test]
fn the_chain_takes_the_first_configured_source_in_the_sdks_order() {
    let keys = [("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEWXYZ"), ("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")];
    let irsa = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/app"),
    ];
    let pod = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://169.254.170.23/v1/credentials"),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"),
    ];
    let all: Vec<_> = keys.iter().chain(&irsa).chain(&pod).copied().collect();
    let d = chosen(&all).unwrap();
    assert_eq!(d, "environment (AWS_ACCESS_KEY_ID), access key id …WXYZ");
    assert!(!d.contains("s3cr3t"));

    let d = chosen(&all[2..]).unwrap();
    assert!(d.starts_with("web identity (role arn:aws:iam::123456789012:role/app"), "{d}");
    assert!(d.contains("STS https://sts.eu-west-1.amazonaws.com/"), "the regional STS: {d}");

    let d = chosen(&pod).unwrap();
    assert!(d.starts_with("container credentials (http://169.254.170.23/v1/credentials, token file"), "{d}");

    let d = chosen(&[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/abc")]).unwrap();
    assert!(d.contains("http://169.254.170.2/v2/credentials/abc"), "{d}");

    assert_eq!(chosen(&[]).unwrap(), "instance metadata (IMDSv2 at http://169.254.169.254)");
    let d = chosen(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9/")]).unwrap();
    assert_eq!(d, "instance metadata (IMDSv2 at http://127.0.0.1:9)");
}

#[test]
fn the_chain_explains_what_is_missing() {
    let e = chosen(&[("AWS_EC2_METADATA_DISABLED", "TRUE")]).unwrap_err();
    assert!(e.contains("AWS_EC2_METADATA_DISABLED"), "{e}");
    let e = chosen(&[("AWS_ACCESS_KEY_ID", "AKIA")]).unwrap_err();
    assert!(e.contains("AWS_SECRET_ACCESS_KEY is not"), "{e}");
    let e = chosen(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")]).unwrap_err();
    assert!(e.contains("AWS_ROLE_ARN"), "{e}");
    let e = chosen(&[("AWS_ENDPOINT_URL_STS", "ftp://x"), ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"), ("AWS_ROLE_ARN", "r")]).unwrap_err();
    assert!(e.contains("http"), "{e}");
}

#[test]
fn fixed_keys_change_identity_with_any_part() {
    let a = chain::select(&env(&[("AWS_ACCESS_KEY_ID", "AKIA1"), ("AWS_SECRET_ACCESS_KEY", "one")]), "r").unwrap();
    let b = chain::select(&env(&[("AWS_ACCESS_KEY_ID", "AKIA1"), ("AWS_SECRET_ACCESS_KEY", "two")]), "r").unwrap();
    assert_ne!(a.digest, b.digest, "a rotated secret is a new source");
    assert_ne!(a.fingerprint, b.fingerprint);
}

#[test]
fn json_credentials_parse_and_never_show_the_secret() {
    let now = UNIX_EPOCH + Duration::from_secs(1_796_590_800 - 600);
    let body = br#"{"Code":"Success","AccessKeyId":"ASIAEXAMPLEABCD","SecretAccessKey":"very-secret","Token":"tok","Expiration":"2026-12-06T21:00:00Z"}"#;
    let m = parse_json_keys(body, now).unwrap();
    assert_eq!(m.lifetime, Duration::from_secs(600));
    let shown = format!("{m:?}");
    assert!(shown.contains("…ABCD") && !shown.contains("very-secret") && !shown.contains("tok\""), "{shown}");
    let e = parse_json_keys(br#"{"Code":"Failed","AccessKeyId":"a","SecretAccessKey":"b"}"#, now).unwrap_err();
    assert_eq!(e, "Code is Failed");
    let e = parse_json_keys(br#"{"AccessKeyId":"a","SecretAccessKey":["very-secret"]}"#, now).unwrap_err();
    assert!(!e.contains("very-secret"), "{e}");
    let m = parse_json_keys(br#"{"AccessKeyId":"a","SecretAccessKey":"b"}"#, SystemTime::now()).unwrap();
    assert_eq!(m.lifetime, DEFAULT_LIFETIME, "no Expiration: the SDKs' 15 minutes");
}

#[test]
fn key_id_tails_are_four_characters_at_most() {
    assert_eq!(key_id_tail("AKIAIOSFODNN7EXAMPLE"), "…MPLE");
    assert_eq!(key_id_tail("ab"), "…ab");
}
