//! The console's sign-in state lives in the store: two application instances on one database
//! (two replicas behind one address) share sessions, one-time sign-in links and OpenID Connect
//! `state`s; the store keeps only the hash of a cookie value.

use reqwest::StatusCode;

use crate::common::inproc::InProcess;
use crate::common::{Backend, TestApp};
use crate::console::csrf;

fn person() -> carebridge::access::Client {
    let mut c = carebridge::access::Client::system("u-gp", carebridge::access::Role::CareTeam);
    c.person = Some(carebridge::access::Person {
        practitioner: carebridge::access::Ident::parse("https://autregweb.sst.dk|TEST2"),
        organization: None,
        sector: Some("gp".into()),
    });
    c
}

async fn two_replicas_share_sign_in(backend: Backend) {
    let a = TestApp::spawn(backend).await;
    let mut b = InProcess::start(&a.dir.path().join("carebridge.toml"))
        .await
        .expect("a second instance on the same database");
    let root_a = a.base.trim_end_matches("/fhir").to_owned();
    let root_b = b.base.trim_end_matches("/fhir").to_owned();
    assert_ne!(root_a, root_b);
    let http = carebridge::outbound::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // A link minted on A signs in on B, once: A refuses it afterwards.
    let link = a.sessions().mint_link(person()).await.unwrap();
    let signed = http
        .get(format!("{root_b}/ui/sign-in/{link}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), StatusCode::SEE_OTHER);
    let cookie = signed.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let again = http
        .get(format!("{root_a}/ui/sign-in/{link}"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::FORBIDDEN);

    // The session made on B works on A, with the same CSRF token.
    let get = |root: &str| {
        http.get(format!("{root}/ui/inbox"))
            .header("cookie", &cookie)
            .send()
    };
    let on_a = get(&root_a).await.unwrap();
    assert_eq!(on_a.status(), StatusCode::OK);
    let page_a = on_a.text().await.unwrap();
    let page_b = get(&root_b).await.unwrap().text().await.unwrap();
    assert_eq!(csrf(&page_a), csrf(&page_b));

    // The store holds the hash of the cookie value, never the value.
    let value = cookie.split_once('=').unwrap().1;
    let mut tx = a.app_gateway.store().begin_read().await.unwrap();
    assert!(
        tx.session_get(&carebridge::auth::token_hash(value))
            .await
            .unwrap()
            .is_some()
    );
    assert!(tx.session_get(value).await.unwrap().is_none());
    drop(tx);

    // An OpenID Connect sign-in begun on A finishes on B, once.
    let (state, verifier) = a.sessions().begin_sign_in().await.unwrap();
    assert_eq!(
        b.sessions.finish_sign_in(&state).await.unwrap(),
        Some(verifier)
    );
    assert_eq!(a.sessions().finish_sign_in(&state).await.unwrap(), None);

    // Signing out on B ends the session on A.
    let out = http
        .post(format!("{root_b}/ui/sign-out"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf(&page_a))])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let after = get(&root_a).await.unwrap();
    assert_eq!(after.status(), StatusCode::SEE_OTHER);
    assert_eq!(after.headers()["location"], "/ui/sign-in?ended=1");
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn two_instances_on_one_sqlite_file_share_sessions_links_and_states() {
    two_replicas_share_sign_in(Backend::Sqlite).await;
}

#[tokio::test]
async fn two_instances_on_one_postgres_database_share_sessions_links_and_states() {
    two_replicas_share_sign_in(Backend::Postgres).await;
}
