//! IT staff's pages as maud templates: the board of sector endpoints, the dead letters with
//! replay, the message browser with resend, and the system page with the endpoint probes.
//! They show resource types, gateway ids, states, statuses and issue codes — never a resource's
//! content, a patient id or a name.

use maud::{Markup, html};

use super::i18n::{Lang, Msg};
use crate::fhir::time::instant;
use crate::gateway::operations::About;
use crate::gateway::sector_health::BoardLine;
use crate::outbound::probe::Probe;
use crate::store::OutboxEntry;

/// IT staff's navigation.
pub const NAV: [(&str, Msg); 4] = [
    ("/ui/it/board", Msg::NavBoard),
    ("/ui/it/dead", Msg::NavDead),
    ("/ui/it/messages", Msg::NavMessages),
    ("/ui/it/system", Msg::NavSystem),
];

fn state_text(state: &str) -> Msg {
    match state {
        "failing" => Msg::StateFailing,
        "idle" => Msg::StateIdle,
        "paused" => Msg::StatePaused,
        "sends-only" => Msg::StateSendsOnly,
        _ => Msg::StateHealthy,
    }
}

fn when(us: Option<i64>) -> String {
    us.map_or_else(|| "—".to_owned(), instant)
}

fn board_row(lang: Lang, b: &BoardLine) -> Markup {
    html! {
        tr data-sector=(b.sector) data-state=(b.state) {
            th scope="row" { (b.name) br; span class="codes" { (b.sector) } }
            td { span class={ "state state-" (b.state) } { (lang.t(state_text(b.state))) }
                 @if let Some(since) = b.since_us { br; span class="codes" { (instant(since)) } } }
            td { (b.pending) " / " (b.dead) }
            td { @match b.oldest_age_s { Some(s) => { (s) " " (lang.t(Msg::Seconds)) }, None => "—" } }
            td { (b.streak) }
            td { @match (&b.last_status, &b.last_error) {
                (None, None) => "—",
                (status, error) => span lang="en" { (status.map_or(String::new(), |s| s.to_string())) " " (error.as_deref().unwrap_or("")) },
            } }
            td { (b.delivered_24h) " / " (b.failed_24h) }
            td { @if b.pull { (b.cursor.as_deref().unwrap_or("—")) br; span class="codes" { (when(b.last_poll_us)) } } @else { "—" } }
        }
    }
}

/// The board of sector endpoints.
pub fn board(lang: Lang, lines: &[BoardLine]) -> Markup {
    html! {
        h1 { (lang.t(Msg::BoardTitle)) }
        p { (lang.t(Msg::BoardIntro)) }
        table id="board" {
            caption class="visually-hidden" { (lang.t(Msg::BoardTitle)) }
            thead { tr {
                th scope="col" { (lang.t(Msg::ColSectorName)) }
                th scope="col" { (lang.t(Msg::ColState)) }
                th scope="col" { (lang.t(Msg::ColQueue)) }
                th scope="col" { (lang.t(Msg::ColOldest)) }
                th scope="col" { (lang.t(Msg::ColStreak)) }
                th scope="col" { (lang.t(Msg::ColLastError)) }
                th scope="col" { (lang.t(Msg::Col24h)) }
                th scope="col" { (lang.t(Msg::ColPull)) }
            } }
            tbody { @for b in lines { (board_row(lang, b)) } }
        }
    }
}

fn reason_field(lang: Lang, id: &str) -> Markup {
    html! {
        label for=(id) { (lang.t(Msg::Reason)) }
        input id=(id) type="text" name="reason" required maxlength="500";
    }
}

fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// One entry's metadata cells.
fn entry_cells(e: &OutboxEntry) -> Markup {
    html! {
        td { (e.id) }
        td { (e.rtype) "/" (e.gid) " v" (e.version) }
        td { (e.source) " → " (e.target) }
        td { (e.state.code()) }
        td { (e.attempts) }
        td { span lang="en" { (e.last_status.map_or(String::new(), |s| s.to_string())) " " (e.last_error.as_deref().unwrap_or("")) } }
        td { (instant(e.created_us)) }
    }
}

fn entry_head(lang: Lang) -> Markup {
    html! {
        th scope="col" { (lang.t(Msg::ColEntry)) }
        th scope="col" { (lang.t(Msg::ColResource)) }
        th scope="col" { (lang.t(Msg::ColFromTo)) }
        th scope="col" { (lang.t(Msg::ColState)) }
        th scope="col" { (lang.t(Msg::ColAttempts)) }
        th scope="col" { (lang.t(Msg::ColLastError)) }
        th scope="col" { (lang.t(Msg::ColWritten)) }
    }
}

/// The dead letters, with replay of one and of all of a sector.
pub fn dead(
    lang: Lang,
    entries: &[OutboxEntry],
    sectors: &[(String, String)],
    done: Option<usize>,
    csrf: &str,
) -> Markup {
    html! {
        h1 { (lang.t(Msg::DeadTitle)) }
        p { (lang.t(Msg::DeadIntro)) }
        @if let Some(n) = done { p class="notice" role="status" id="done" { (lang.t(Msg::Queued)) ": " (n) } }
        form class="filters" method="post" action="/ui/it/dead/replay-sector" {
            (csrf_field(csrf))
            fieldset {
                legend { (lang.t(Msg::ReplayAll)) }
                div class="field" {
                    label for="rs-target" { (lang.t(Msg::FieldTarget)) }
                    select id="rs-target" name="target" {
                        @for (id, name) in sectors { option value=(id) { (name) } }
                    }
                }
                div class="field" { (reason_field(lang, "rs-reason")) }
                button type="submit" { (lang.t(Msg::ReplayAll)) }
            }
        }
        @if entries.is_empty() { p { (lang.t(Msg::NoDead)) } } @else {
            table id="dead" {
                caption class="visually-hidden" { (lang.t(Msg::DeadTitle)) }
                thead { tr { (entry_head(lang)) th scope="col" { (lang.t(Msg::Replay)) } } }
                tbody { @for e in entries { tr data-entry=(e.id) {
                    (entry_cells(e))
                    td { form class="ack" method="post" action={ "/ui/it/dead/" (e.id) "/replay" } {
                        (csrf_field(csrf))
                        (reason_field(lang, &format!("reason-{}", e.id)))
                        button type="submit" { (lang.t(Msg::Replay)) }
                    } }
                } } }
            }
        }
    }
}

/// The message browser's filter, as in the URL (metadata only: no patient data).
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct MessageFilter {
    #[serde(default)]
    pub target: String,
    #[serde(default, rename = "type")]
    pub rtype: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub before: String,
}

fn text_field(lang: Lang, name: &str, label: Msg, kind: &str, value: &str) -> Markup {
    let id = format!("m-{name}");
    html! {
        div class="field" {
            label for=(id) { (lang.t(label)) }
            input id=(id) type=(kind) name=(name) value=(value);
        }
    }
}

fn message_filters(lang: Lang, f: &MessageFilter, sectors: &[(String, String)]) -> Markup {
    let states = ["pending", "delivered", "dead", "superseded"];
    html! {
        form class="filters" method="get" action="/ui/it/messages" {
            fieldset {
                legend { (lang.t(Msg::Filters)) }
                div class="field" {
                    label for="m-target" { (lang.t(Msg::FieldTarget)) }
                    select id="m-target" name="target" {
                        option value="" selected[f.target.is_empty()] { (lang.t(Msg::Any)) }
                        @for (id, name) in sectors { option value=(id) selected[f.target == *id] { (name) } }
                    }
                }
                (text_field(lang, "type", Msg::FieldType, "text", &f.rtype))
                div class="field" {
                    label for="m-state" { (lang.t(Msg::FieldState)) }
                    select id="m-state" name="state" {
                        option value="" selected[f.state.is_empty()] { (lang.t(Msg::Any)) }
                        @for s in states { option value=(s) selected[f.state == s] { (s) } }
                    }
                }
                (text_field(lang, "resource", Msg::FieldResourceId, "text", &f.resource))
                (text_field(lang, "from", Msg::FieldFrom, "date", &f.from))
                (text_field(lang, "to", Msg::FieldTo, "date", &f.to))
                button type="submit" { (lang.t(Msg::Search)) }
            }
        }
    }
}

fn resend_form(lang: Lang, e: &OutboxEntry, targets: &[(String, String)], csrf: &str) -> Markup {
    let tid = format!("to-{}", e.id);
    html! {
        form class="ack" method="post" action={ "/ui/it/messages/" (e.id) "/resend" } {
            (csrf_field(csrf))
            label for=(tid) { (lang.t(Msg::ResendTo)) }
            select id=(tid) name="target" {
                @for (id, name) in targets { @if *id != e.source {
                    option value=(id) selected[*id == e.target] { (name) }
                } }
            }
            (reason_field(lang, &format!("why-{}", e.id)))
            button type="submit" { (lang.t(Msg::Resend)) }
        }
    }
}

/// The message browser: the filter, a page of entries, the next page's link.
pub fn messages(
    lang: Lang,
    f: &MessageFilter,
    entries: &[OutboxEntry],
    sectors: &[(String, String)],
    next: Option<String>,
    csrf: &str,
) -> Markup {
    html! {
        h1 { (lang.t(Msg::MessagesTitle)) }
        p { (lang.t(Msg::MessagesIntro)) }
        (message_filters(lang, f, sectors))
        @if entries.is_empty() { p { (lang.t(Msg::NoMessages)) } } @else {
            table id="messages" {
                caption class="visually-hidden" { (lang.t(Msg::MessagesTitle)) }
                thead { tr { (entry_head(lang)) th scope="col" { (lang.t(Msg::Resend)) } } }
                tbody { @for e in entries { tr data-entry=(e.id) data-gid=(e.gid) {
                    (entry_cells(e))
                    td { @if e.state.code() == "delivered" { (resend_form(lang, e, sectors, csrf)) } @else { "—" } }
                } } }
            }
            @if let Some(href) = next { nav class="pages" aria-label=(lang.t(Msg::PageOf)) { a href=(href) { (lang.t(Msg::NextPage)) } } }
        }
    }
}

/// The system page: version, configuration, start, and the probes when run.
pub fn system(lang: Lang, about: &About, probes: Option<&[Probe]>, csrf: &str) -> Markup {
    html! {
        h1 { (lang.t(Msg::SystemTitle)) }
        dl class="facts" {
            dt { (lang.t(Msg::Version)) } dd id="version" { (about.version) }
            dt { (lang.t(Msg::ConfigFile)) } dd { code { (about.config_file) } }
            dt { (lang.t(Msg::Started)) } dd { (about.started) }
        }
        section aria-labelledby="h-probes" {
            h2 id="h-probes" { (lang.t(Msg::Probes)) }
            p { (lang.t(Msg::ProbesIntro)) }
            form method="post" action="/ui/it/system/probe" {
                (csrf_field(csrf))
                button type="submit" { (lang.t(Msg::RunProbes)) }
            }
            @if let Some(probes) = probes {
                table id="probes" {
                    caption class="visually-hidden" { (lang.t(Msg::Probes)) }
                    thead { tr {
                        th scope="col" { (lang.t(Msg::ColSectorName)) }
                        th scope="col" { (lang.t(Msg::ColState)) }
                        th scope="col" { (lang.t(Msg::Detail)) }
                    } }
                    tbody { @for p in probes { tr data-sector=(p.sector) {
                        td { (p.sector) }
                        td { (lang.t(if p.ok { Msg::ProbeOk } else { Msg::ProbeFailed })) }
                        td lang="en" { (p.message) }
                    } } }
                }
            }
        }
    }
}
