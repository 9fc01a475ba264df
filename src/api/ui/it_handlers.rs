//! IT staff's pages under `/ui/it/`: the board (`Gateway::sector_board`), dead letters and their
//! replay (`browse_outbox`, `replay_dead`, `replay_sector`), the message browser and resend
//! (`browse_outbox`, `resend`), the system page (`about`) and `check-config`'s probes on demand.
//! Every call is made as the signed-in person, so `authorize` decides; no page shows a
//! patient id, a name or a resource's content.

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};

use super::audit_handlers::{csrf_refused, refused};
use super::handlers::{csrf_ok, field};
use super::i18n::Msg;
use super::it_pages::{self, MessageFilter, NAV};
use super::pages::{self, Frame};
use super::{SignedIn, html, see_other};
use crate::api::AppState;
use crate::fhir::time::period;
use crate::gateway::GatewayError;
use crate::store::{DeliveryState, OutboxQuery};

/// Entries on one page of the message browser and of the dead letters.
pub const PAGE_ROWS: i64 = 50;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui/it", get(home))
        .route("/ui/it/board", get(board))
        .route("/ui/it/dead", get(dead))
        .route("/ui/it/dead/{id}/replay", post(replay))
        .route("/ui/it/dead/replay-sector", post(replay_sector))
        .route("/ui/it/messages", get(messages))
        .route("/ui/it/messages/{id}/resend", post(resend))
        .route("/ui/it/system", get(system))
        .route("/ui/it/system/probe", post(probe))
}

fn it_page(s: &SignedIn, title: Msg, path: &str, body: maud::Markup) -> Response {
    let f = Frame {
        lang: s.lang,
        title: s.lang.t(title),
        who: Some((&s.name, &s.csrf)),
        path,
    };
    html(StatusCode::OK, pages::page_with(&f, &NAV, body))
}

fn sectors(state: &AppState) -> Vec<(String, String)> {
    state
        .gateway
        .settings()
        .sectors
        .iter()
        .filter(|s| s.base_url.is_some())
        .map(|s| (s.id.clone(), s.name.clone()))
        .collect()
}

async fn home(_: SignedIn) -> Response {
    see_other("/ui/it/board")
}

async fn board(State(state): State<AppState>, s: SignedIn) -> Response {
    match state.gateway.sector_board(&s.caller).await {
        Ok(lines) => it_page(
            &s,
            Msg::BoardTitle,
            "/ui/it/board",
            it_pages::board(s.lang, &lines),
        ),
        Err(e) => refused(&s, Msg::BoardTitle, &e),
    }
}

#[derive(serde::Deserialize, Default)]
struct DeadQuery {
    #[serde(default)]
    done: Option<usize>,
}

async fn dead(State(state): State<AppState>, s: SignedIn, Query(q): Query<DeadQuery>) -> Response {
    let query = OutboxQuery {
        state: Some(DeliveryState::Dead),
        count: crate::gateway::operations::MAX_PAGE,
        ..OutboxQuery::default()
    };
    match state.gateway.browse_outbox(&s.caller, &query).await {
        Ok(entries) => {
            let body = it_pages::dead(s.lang, &entries, &sectors(&state), q.done, &s.csrf);
            it_page(&s, Msg::DeadTitle, "/ui/it/dead", body)
        }
        Err(e) => refused(&s, Msg::DeadTitle, &e),
    }
}

async fn replay(
    State(state): State<AppState>,
    s: SignedIn,
    Path(id): Path<i64>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if !csrf_ok(&s, &form) {
        return csrf_refused(&s, Msg::DeadTitle);
    }
    match state
        .gateway
        .replay_dead(&s.caller, id, field(&form, "reason"))
        .await
    {
        Ok(Some(_)) => see_other("/ui/it/dead?done=1"),
        Ok(None) => refused(
            &s,
            Msg::DeadTitle,
            &GatewayError::NotFound(format!("dead letter {id}")),
        ),
        Err(e) => refused(&s, Msg::DeadTitle, &e),
    }
}

async fn replay_sector(
    State(state): State<AppState>,
    s: SignedIn,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if !csrf_ok(&s, &form) {
        return csrf_refused(&s, Msg::DeadTitle);
    }
    match state
        .gateway
        .replay_sector(&s.caller, field(&form, "target"), field(&form, "reason"))
        .await
    {
        Ok(n) => see_other(&format!("/ui/it/dead?done={n}")),
        Err(e) => refused(&s, Msg::DeadTitle, &e),
    }
}

/// The store's query of the browser's filter (`None` for a value that cannot be read).
fn outbox_query(f: &MessageFilter) -> Option<OutboxQuery> {
    let text = |v: &str| (!v.trim().is_empty()).then(|| v.trim().to_owned());
    let bound = |v: &str, end: bool| match text(v) {
        None => Some(None),
        Some(v) => period(&v).map(|(s, e)| Some(if end { e } else { s })),
    };
    Some(OutboxQuery {
        target: text(&f.target),
        rtype: text(&f.rtype),
        state: match text(&f.state) {
            Some(s) => Some(DeliveryState::parse(&s)?),
            None => None,
        },
        gid: text(&f.resource),
        from_us: bound(&f.from, false)?,
        to_us: bound(&f.to, true)?,
        before_id: match text(&f.before) {
            Some(b) => Some(b.parse().ok()?),
            None => None,
        },
        count: PAGE_ROWS,
    })
}

/// The next page's link: the same filter, before the last entry shown.
fn next_page(f: &MessageFilter, last_id: i64) -> String {
    let pairs = [
        ("target", f.target.as_str()),
        ("type", f.rtype.as_str()),
        ("state", f.state.as_str()),
        ("resource", f.resource.as_str()),
        ("from", f.from.as_str()),
        ("to", f.to.as_str()),
    ];
    let mut q: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect();
    q.push(format!("before={last_id}"));
    format!("/ui/it/messages?{}", q.join("&"))
}

async fn messages(
    State(state): State<AppState>,
    s: SignedIn,
    Query(f): Query<MessageFilter>,
) -> Response {
    let Some(query) = outbox_query(&f) else {
        return refused(
            &s,
            Msg::MessagesTitle,
            &GatewayError::invalid(crate::fhir::outcome::Issue::error("value", "filter")),
        );
    };
    let entries = match state.gateway.browse_outbox(&s.caller, &query).await {
        Ok(e) => e,
        Err(e) => return refused(&s, Msg::MessagesTitle, &e),
    };
    let next = (entries.len() as i64 == PAGE_ROWS)
        .then(|| entries.last().map(|e| next_page(&f, e.id)))
        .flatten();
    let body = it_pages::messages(s.lang, &f, &entries, &sectors(&state), next, &s.csrf);
    it_page(&s, Msg::MessagesTitle, "/ui/it/messages", body)
}

async fn resend(
    State(state): State<AppState>,
    s: SignedIn,
    Path(id): Path<i64>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if !csrf_ok(&s, &form) {
        return csrf_refused(&s, Msg::MessagesTitle);
    }
    let target = field(&form, "target");
    match state
        .gateway
        .resend(&s.caller, id, target, field(&form, "reason"))
        .await
    {
        Ok(Some(e)) => see_other(&format!("/ui/it/messages?resource={}", e.gid)),
        Ok(None) => refused(
            &s,
            Msg::MessagesTitle,
            &GatewayError::NotFound(format!("delivered entry {id}")),
        ),
        Err(e) => refused(&s, Msg::MessagesTitle, &e),
    }
}

async fn system(State(state): State<AppState>, s: SignedIn) -> Response {
    match state.gateway.about(&s.caller) {
        Ok(about) => it_page(
            &s,
            Msg::SystemTitle,
            "/ui/it/system",
            it_pages::system(s.lang, &about, None, &s.csrf),
        ),
        Err(e) => refused(&s, Msg::SystemTitle, &e),
    }
}

/// `check-config`'s probes of every sector endpoint, run now.
async fn probe(
    State(state): State<AppState>,
    s: SignedIn,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if !csrf_ok(&s, &form) {
        return csrf_refused(&s, Msg::SystemTitle);
    }
    // `about` decides (administrators) before anything is probed.
    let about = match state.gateway.about(&s.caller) {
        Ok(a) => a,
        Err(e) => return refused(&s, Msg::SystemTitle, &e),
    };
    let settings = state.gateway.settings();
    let timeout =
        std::time::Duration::from_millis(settings.exchange.request_timeout_ms.min(15_000));
    let probes = match crate::outbound::Outbound::new(timeout) {
        Ok(outbound) => crate::outbound::probe::probe_all(settings, &outbound).await,
        Err(_) => {
            return super::handlers::message_page(
                s.lang,
                StatusCode::INTERNAL_SERVER_ERROR,
                Msg::SystemTitle,
                Msg::ServerError,
                Some(&s),
            );
        }
    };
    let body = it_pages::system(s.lang, &about, Some(&probes), &s.csrf);
    it_page(&s, Msg::SystemTitle, "/ui/it/system", body)
}
