//! The console's pages as compile-checked maud templates: one frame (skip link, navigation,
//! language switch, sign-out form), the inbox, the patient's total plan, an alert's detail,
//! sign-in and the error page. Every text comes from the catalogue ([`super::i18n`]); every
//! form carries the session's CSRF token.

use maud::{DOCTYPE, Markup, html};

use super::i18n::{self, CODES, Lang, Msg};
use std::collections::HashMap;

use super::view::{AlertLine, HistoryLine, Plan, Record, day};
use crate::config::AckReason;
use crate::gateway::console::PatientCard;

/// What every page of a signed-in person shows around its content.
pub struct Frame<'a> {
    pub lang: Lang,
    pub title: &'a str,
    /// The signed-in person and the session's CSRF token.
    pub who: Option<(&'a str, &'a str)>,
    /// The page's path (the language switch comes back to it).
    pub path: &'a str,
}

pub fn page(f: &Frame<'_>, content: Markup) -> Markup {
    let inbox: &[(&str, Msg)] = if f.who.is_some() {
        &[("/ui/inbox", Msg::NavInbox)]
    } else {
        &[]
    };
    page_with(f, inbox, content)
}

/// A page with its own navigation links (the auditor's and IT staff's pages).
pub fn page_with(f: &Frame<'_>, nav: &[(&str, Msg)], content: Markup) -> Markup {
    let l = f.lang;
    html! {
        (DOCTYPE)
        html lang=(l.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (f.title) " – carebridge" }
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/console.js" defer {}
            }
            body {
                a class="skip" href="#main" { (l.t(Msg::SkipToContent)) }
                header class="top" {
                    p class="brand" { (l.t(Msg::Product)) }
                    nav aria-label=(l.t(Msg::MainNav)) {
                        ul {
                            @for (href, text) in nav {
                                li { a href=(href) aria-current=[(*href == f.path).then_some("page")] { (l.t(*text)) } }
                            }
                            li {
                                a href={ "/ui/language/" (l.other().code()) "?back=" (f.path) }
                                  lang=(l.other().code()) hreflang=(l.other().code()) { (l.t(Msg::OtherLanguage)) }
                            }
                        }
                    }
                    @if let Some((who, csrf)) = f.who {
                        form class="signout" method="post" action="/ui/sign-out" {
                            span { (l.t(Msg::SignedInAs)) " " strong { (who) } }
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { (l.t(Msg::SignOut)) }
                        }
                    }
                }
                main id="main" tabindex="-1" { (content) }
            }
        }
    }
}

/// A page with one message (errors, refused links, an ended session).
pub fn message(lang: Lang, title: Msg, text: &str, signed_in: bool) -> Markup {
    html! {
        h1 { (lang.t(title)) }
        p class="notice" role="alert" { (text) }
        @if signed_in {
            p { a href="/ui/inbox" { (lang.t(Msg::BackToInbox)) } }
        } @else {
            p { a href="/ui/sign-in" { (lang.t(Msg::SignInTitle)) } }
        }
    }
}

/// The sign-in page: the organisation's login when an issuer is configured.
pub fn sign_in(lang: Lang, notice: Option<Msg>, oidc: bool) -> Markup {
    html! {
        h1 { (lang.t(Msg::SignInTitle)) }
        @if let Some(n) = notice { p class="notice" role="status" { (lang.t(n)) } }
        p { (lang.t(Msg::SignInIntro)) }
        @if oidc { p { a class="button" href="/ui/oidc/start" { (lang.t(Msg::SignInOidc)) } } }
    }
}

/// After a sign-in through the issuer: a page of the console's own that moves on to the inbox,
/// so that the (SameSite=Strict) cookie is sent by a navigation of this site.
pub fn signed_in(lang: Lang, to: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(format!("0;url={to}"));
                title { (lang.t(Msg::SignedIn)) " – carebridge" }
            }
            body { main { h1 { (lang.t(Msg::SignedIn)) } p { a href=(to) { (lang.t(Msg::Continue)) } } } }
        }
    }
}

/// The inbox's filter values (all optional).
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub sector: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub severity: String,
    /// `nobody` (no coordinator) or `coordinator`.
    #[serde(default)]
    pub owner: String,
}

fn select(
    lang: Lang,
    name: &str,
    label: Msg,
    current: &str,
    options: &[(String, String)],
) -> Markup {
    let id = format!("f-{name}");
    html! {
        div class="field" {
            label for=(id) { (lang.t(label)) }
            select id=(id) name=(name) {
                option value="" selected[current.is_empty()] { (lang.t(Msg::Any)) }
                @for (value, text) in options {
                    option value=(value) selected[current == value] { (text) }
                }
            }
        }
    }
}

fn filters(lang: Lang, f: &Filter, sectors: &[(String, String)]) -> Markup {
    let codes: Vec<(String, String)> = CODES
        .iter()
        .map(|c| (c.to_string(), code_name(lang, c, c)))
        .collect();
    let statuses: Vec<(String, String)> = ["preliminary", "amended", "final", "snoozed"]
        .iter()
        .map(|s| (s.to_string(), lang.t(i18n::status(s)).to_owned()))
        .collect();
    let severities: Vec<(String, String)> = ["high", "moderate", "low"]
        .iter()
        .map(|s| (s.to_string(), lang.t(i18n::severity(s)).to_owned()))
        .collect();
    let owners = vec![
        (
            "coordinator".to_owned(),
            lang.t(Msg::Coordinator).to_owned(),
        ),
        ("nobody".to_owned(), lang.t(Msg::Nobody).to_owned()),
    ];
    html! {
        form class="filters" method="get" action="/ui/inbox" {
            fieldset {
                legend { (lang.t(Msg::Filters)) }
                (select(lang, "code", Msg::FilterCode, &f.code, &codes))
                (select(lang, "sector", Msg::FilterSector, &f.sector, sectors))
                (select(lang, "status", Msg::FilterStatus, &f.status, &statuses))
                (select(lang, "severity", Msg::FilterSeverity, &f.severity, &severities))
                (select(lang, "owner", Msg::FilterOwner, &f.owner, &owners))
                button type="submit" { (lang.t(Msg::Apply)) }
            }
        }
    }
}

/// An alert code's name in the catalogue, else the DetectedIssue's own text.
pub fn code_name(lang: Lang, code: &str, fallback: &str) -> String {
    i18n::code_texts(code).map_or_else(|| fallback.to_owned(), |t| lang.t(t.name).to_owned())
}

fn severity_badge(lang: Lang, sev: &str) -> Markup {
    html! { span class={ "sev sev-" (sev) } { (lang.t(i18n::severity(sev))) } }
}

/// The acknowledge form of one alert.
pub fn ack_form(lang: Lang, a: &AlertLine, csrf: &str, reasons: &[AckReason]) -> Markup {
    let rid = format!("reason-{}", a.id);
    let cid = format!("comment-{}", a.id);
    html! {
        form class="ack" method="post" action={ "/ui/alerts/" (a.id) "/acknowledge" } {
            input type="hidden" name="csrf" value=(csrf);
            label for=(rid) { (lang.t(Msg::AckReason)) }
            select id=(rid) name="reason" required {
                @for r in reasons {
                    option value=(r.code) { (if lang == Lang::Da { &r.da } else { &r.en }) }
                }
            }
            label for=(cid) { (lang.t(Msg::AckComment)) }
            input id=(cid) type="text" name="comment" maxlength="500";
            button type="submit" { (lang.t(Msg::Acknowledge)) }
        }
    }
}

/// An alert's status; while snoozed, "snoozed until <date> by <author>".
fn status_text(lang: Lang, a: &AlertLine) -> Markup {
    html! {
        (lang.t(i18n::status(&a.status)))
        @if let Some((until, by, _)) = &a.snoozed {
            ", " (lang.t(Msg::SnoozedUntil)) " " time datetime=(until) { (day(until)) }
            " " (lang.t(Msg::EvBy)) " " (by)
        }
    }
}

/// The snooze form of one open alert.
pub fn snooze_form(lang: Lang, a: &AlertLine, csrf: &str) -> Markup {
    let did = format!("until-{}", a.id);
    let cid = format!("snooze-comment-{}", a.id);
    let hid = format!("snooze-hint-{}", a.id);
    html! {
        form class="snooze" method="post" action={ "/ui/alerts/" (a.id) "/snooze" } {
            input type="hidden" name="csrf" value=(csrf);
            label for=(did) { (lang.t(Msg::SnoozeUntil)) }
            input id=(did) type="date" name="until" required aria-describedby=(hid);
            label for=(cid) { (lang.t(Msg::SnoozeComment)) }
            input id=(cid) type="text" name="comment" maxlength="500";
            button type="submit" { (lang.t(Msg::Snooze)) }
            p id=(hid) class="hint" { (lang.t(Msg::SnoozeHint)) }
        }
    }
}

/// The "next page" of the inbox: a GET form carrying the filters and the last alert shown.
fn next_page(lang: Lang, f: &Filter, after: &str) -> Markup {
    html! {
        form class="next" method="get" action="/ui/inbox" {
            @for (name, value) in [("code", &f.code), ("sector", &f.sector), ("status", &f.status),
                                   ("severity", &f.severity), ("owner", &f.owner)] {
                @if !value.is_empty() { input type="hidden" name=(name) value=(value); }
            }
            input type="hidden" name="after" value=(after);
            button type="submit" { (lang.t(Msg::NextPage)) }
        }
    }
}

/// The patient's name (or "the patient's total plan") and the alert's owner.
fn patient_and_owner<'a>(
    lang: Lang,
    a: &AlertLine,
    cards: &'a HashMap<String, PatientCard>,
) -> (String, Option<&'a str>) {
    let card = cards.get(&a.patient);
    let name = card
        .and_then(|c| c.name.clone())
        .unwrap_or_else(|| lang.t(Msg::OpenPatient).to_owned());
    (name, card.and_then(|c| c.coordinator.as_deref()))
}

fn alert_row(
    lang: Lang,
    a: &AlertLine,
    cards: &HashMap<String, PatientCard>,
    csrf: &str,
    reasons: &[AckReason],
) -> Markup {
    let (name, owner) = patient_and_owner(lang, a, cards);
    html! {
        tr class={ "alert sev-row-" (a.severity) } data-alert=(a.id) {
            td { (severity_badge(lang, &a.severity)) }
            td {
                a href={ "/ui/alerts/" (a.id) } { (code_name(lang, &a.code, &a.code_text)) }
                p class="detail" lang="en" { (a.detail) }
            }
            td { a href={ "/ui/patients/" (a.patient) } { (name) } }
            td { (a.sectors().join(", ")) }
            td { @match owner { Some(o) => (o), None => em { (lang.t(Msg::Nobody)) } } }
            td { time datetime=(a.raised) { (day(&a.raised)) } }
            td { (status_text(lang, a)) }
            td {
                @if a.status == "final" { "—" } @else { (ack_form(lang, a, csrf, reasons)) }
            }
        }
    }
}

/// A page of the inbox: its alerts, their patients' cards, and where the next page starts.
pub struct Listing<'a> {
    pub alerts: &'a [AlertLine],
    pub cards: &'a HashMap<String, PatientCard>,
    pub next: Option<&'a str>,
}

/// The alerts table (the live script replaces it when alerts change).
pub fn alert_table(
    lang: Lang,
    f: &Filter,
    l: &Listing<'_>,
    csrf: &str,
    reasons: &[AckReason],
) -> Markup {
    let (alerts, cards) = (l.alerts, l.cards);
    html! {
        div id="alerts" {
            p class="count" { (alerts.len()) @if l.next.is_some() { "+" } " " (lang.t(Msg::AlertCount)) }
            @if alerts.is_empty() {
                p { (lang.t(Msg::NoAlerts)) }
            } @else {
                table {
                    caption class="visually-hidden" { (lang.t(Msg::InboxTitle)) }
                    thead { tr {
                        th scope="col" { (lang.t(Msg::ColSeverity)) }
                        th scope="col" { (lang.t(Msg::ColAlert)) }
                        th scope="col" { (lang.t(Msg::ColPatient)) }
                        th scope="col" { (lang.t(Msg::ColSectors)) }
                        th scope="col" { (lang.t(Msg::ColOwner)) }
                        th scope="col" { (lang.t(Msg::ColAge)) }
                        th scope="col" { (lang.t(Msg::ColStatus)) }
                        th scope="col" { (lang.t(Msg::ColAction)) }
                    } }
                    tbody {
                        @for a in alerts { (alert_row(lang, a, cards, csrf, reasons)) }
                    }
                }
            }
            @if let Some(after) = l.next { (next_page(lang, f, after)) }
        }
    }
}

/// The inbox: filters, the table, and the live-update region.
pub fn inbox(
    lang: Lang,
    f: &Filter,
    sectors: &[(String, String)],
    listing: &Listing<'_>,
    csrf: &str,
    reasons: &[AckReason],
) -> Markup {
    html! {
        h1 { (lang.t(Msg::InboxTitle)) }
        p { (lang.t(Msg::InboxIntro)) }
        (filters(lang, f, sectors))
        p id="live" class="live" role="status" aria-live="polite"
          data-on=(lang.t(Msg::LiveOn)) data-changed=(lang.t(Msg::LiveChanged)) {}
        (alert_table(lang, f, listing, csrf, reasons))
    }
}

fn record_card(lang: Lang, r: &Record, marks: &[(Vec<String>, Msg)]) -> Markup {
    html! {
        li class="card" {
            p class="title" { (r.title) }
            @for (gids, m) in marks {
                @if gids.contains(&r.gid) { p class="flag" { strong { (lang.t(*m)) } } }
            }
            @if !r.codes.is_empty() { p class="codes" { (lang.t(Msg::Codes)) ": " (r.codes.join(", ")) } }
            @if !r.mapped.is_empty() { p class="codes" { (lang.t(Msg::Mapped)) ": " (r.mapped.join(", ")) } }
            @if !r.status.is_empty() { p { (lang.t(Msg::Status)) ": " (r.status) } }
            @if !r.when.is_empty() { p { (lang.t(Msg::Period)) ": " (r.when) } }
            @if !r.note.is_empty() { p { (r.note) } }
            @if !r.members.is_empty() {
                ul class="members" {
                    @for (name, role, coord) in &r.members {
                        li { (name) @if !role.is_empty() { " (" (role) ")" }
                             @if *coord { " – " strong { (lang.t(Msg::Coordinator)) } } }
                    }
                }
            }
        }
    }
}

/// One section of the patient page: a column per sector, side by side.
fn by_sector(
    lang: Lang,
    heading: Msg,
    recs: &[&Record],
    sectors: &[(String, String)],
    marks: &[(Vec<String>, Msg)],
) -> Markup {
    let hid = format!("h-{heading:?}").to_lowercase();
    html! {
        section aria-labelledby=(hid) {
            h2 id=(hid) { (lang.t(heading)) }
            div class="sectors" {
                @for (id, name) in sectors {
                    div class="sector" {
                        h3 { (name) }
                        @let mine: Vec<&&Record> = recs.iter().filter(|r| &r.sector == id).collect();
                        @if mine.is_empty() { p class="none" { (lang.t(Msg::NoRecords)) } }
                        @else { ul class="cards" { @for r in mine { (record_card(lang, r, marks)) } } }
                    }
                }
            }
        }
    }
}

fn medication_card(lang: Lang, plan: &Plan, marks: &[(Vec<String>, Msg)]) -> Markup {
    let meds = plan.records(&["MedicationRequest", "MedicationStatement"]);
    html! {
        section aria-labelledby="h-meds" {
            h2 id="h-meds" { (lang.t(Msg::Medications)) }
            @if meds.is_empty() { p { (lang.t(Msg::NoRecords)) } } @else {
                table class="medcard" {
                    thead { tr {
                        th scope="col" { (lang.t(Msg::Drug)) }
                        th scope="col" { (lang.t(Msg::Dosage)) }
                        th scope="col" { (lang.t(Msg::Prescriber)) }
                        th scope="col" { (lang.t(Msg::Status)) }
                        th scope="col" { (lang.t(Msg::Since)) }
                    } }
                    tbody { @for m in meds {
                        @let flag = marks.iter().find(|(g, _)| g.contains(&m.gid));
                        tr class=[flag.map(|_| "dup")] {
                            td { (m.title) @if let Some((_, msg)) = flag { " " strong class="flag" { "(" (lang.t(*msg)) ")" } }
                                 br; span class="codes" { (m.codes.join(", ")) } }
                            td { (m.note) }
                            td { (m.sector_name) }
                            td { (m.status) }
                            td { (day(&m.when)) }
                        }
                    } }
                }
            }
        }
    }
}

/// The patient page: the whole `$total-plan`, grouped by kind and sector.
pub fn patient(
    lang: Lang,
    plan: &Plan,
    card: &PatientCard,
    sectors: &[(String, String)],
) -> Markup {
    let marks = vec![
        (plan.implicated_by("DUPTHPGEN"), Msg::Duplicate),
        (plan.implicated_by("DUPTHPCLS"), Msg::ClassDuplicate),
    ];
    html! {
        h1 { (lang.t(Msg::PatientTitle)) @if let Some(n) = &card.name { ": " (n) } }
        p { (lang.t(Msg::PatientIntro)) }
        p { (lang.t(Msg::Coordinator)) ": "
            @match &card.coordinator { Some(c) => strong { (c) }, None => em { (lang.t(Msg::Nobody)) } } }
        @if !plan.identifiers.is_empty() {
            p { (lang.t(Msg::Identifiers)) ": "
                @for (i, (_, v)) in plan.identifiers.iter().enumerate() { @if i > 0 { ", " } (v) } }
        }
        section aria-labelledby="h-alerts" {
            h2 id="h-alerts" { (lang.t(Msg::OpenAlerts)) }
            @if plan.alerts.is_empty() { p { (lang.t(Msg::NoAlerts)) } }
            ul { @for a in plan.alerts.iter().filter(|a| a.open()) {
                li { (severity_badge(lang, &a.severity)) " "
                     a href={ "/ui/alerts/" (a.id) } { (code_name(lang, &a.code, &a.code_text)) }
                     " – " (a.sectors().join(", ")) }
            } }
        }
        (by_sector(lang, Msg::Conditions, &plan.records(&["Condition"]), sectors, &[]))
        (by_sector(lang, Msg::CarePlans, &plan.records(&["CarePlan"]), sectors, &[]))
        (by_sector(lang, Msg::Goals, &plan.records(&["Goal"]), sectors, &[]))
        (medication_card(lang, plan, &marks))
        (by_sector(lang, Msg::CareTeams, &plan.records(&["CareTeam"]), sectors, &[]))
        @let messages = plan.records(&["Communication"]);
        @if !messages.is_empty() { (by_sector(lang, Msg::Messages, &messages, sectors, &[])) }
    }
}

fn event_name(kind: &str) -> Msg {
    match kind {
        "raised" => Msg::EvRaised,
        "updated" => Msg::EvAmended,
        "acknowledged" => Msg::EvAcknowledged,
        "snoozed" => Msg::EvSnoozed,
        "reopened" => Msg::EvReopened,
        _ => Msg::EvClosed,
    }
}

fn history_line(lang: Lang, h: &HistoryLine) -> Markup {
    html! {
        li {
            time datetime=(h.at) { (h.at) } " – " strong { (lang.t(event_name(&h.kind))) }
            @if h.kind == "snoozed" { " " time datetime=(h.detail) { (day(&h.detail)) } }
            " " (lang.t(Msg::EvBy)) " "
            @if h.author.is_empty() { (lang.t(Msg::EvDetection)) } @else { (h.author) }
            @if !h.note.is_empty() { ": " span lang="en" { (h.note) } }
            @if h.kind == "updated" { p lang="en" { (h.detail) } }
            @if !h.added.is_empty() { p { (lang.t(Msg::EvAdded)) ": " (h.added.join(", ")) } }
            @if !h.removed.is_empty() { p { (lang.t(Msg::EvRemoved)) ": " (h.removed.join(", ")) } }
        }
    }
}

fn history(lang: Lang, lines: &[HistoryLine]) -> Markup {
    html! {
        section aria-labelledby="h-history" {
            h2 id="h-history" { (lang.t(Msg::History)) }
            @if lines.is_empty() { p { (lang.t(Msg::NoHistory)) } }
            @else { ol class="history" { @for h in lines { (history_line(lang, h)) } } }
        }
    }
}

/// An alert's detail: what, the records side by side, the rule, the history, what to do, and
/// the forms to acknowledge and snooze it.
pub fn alert(
    lang: Lang,
    a: &AlertLine,
    records: &[Record],
    lines: &[HistoryLine],
    csrf: &str,
    reasons: &[AckReason],
) -> Markup {
    let texts = i18n::code_texts(&a.code);
    html! {
        h1 { (severity_badge(lang, &a.severity)) " " (code_name(lang, &a.code, &a.code_text)) }
        p { (lang.t(Msg::Status)) ": " (status_text(lang, a)) " · "
            a href={ "/ui/patients/" (a.patient) } { (lang.t(Msg::OpenPatient)) } }
        h2 { (lang.t(Msg::Detail)) }
        p lang="en" { (a.detail) }
        section aria-labelledby="h-implicated" {
            h2 id="h-implicated" { (lang.t(Msg::Implicated)) }
            ul class="sectors cards" { @for r in records {
                li class="card" {
                    h3 { (r.sector_name) " – " (r.rtype) }
                    p class="title" { (r.title) }
                    @if !r.codes.is_empty() { p class="codes" { (lang.t(Msg::Codes)) ": " (r.codes.join(", ")) } }
                    @if !r.status.is_empty() { p { (lang.t(Msg::Status)) ": " (r.status) } }
                    @if !r.when.is_empty() { p { (lang.t(Msg::Period)) ": " (r.when) } }
                    @if !r.note.is_empty() { p { (r.note) } }
                }
            } }
        }
        @if let Some(t) = texts {
            section aria-labelledby="h-rule" {
                h2 id="h-rule" { (lang.t(Msg::Rule)) }
                p class="source" { (lang.t(Msg::RuleSource)) " " code { (a.code) } " "
                    (env!("CARGO_PKG_VERSION")) }
                p { (lang.t(t.rule)) }
            }
        }
        (history(lang, lines))
        @if let Some(t) = texts {
            section aria-labelledby="h-todo" { h2 id="h-todo" { (lang.t(Msg::WhatToDo)) } p { (lang.t(t.todo)) } }
        }
        @if a.open() && a.status != "final" { (ack_form(lang, a, csrf, reasons)) }
        @if a.open() { (snooze_form(lang, a, csrf)) }
    }
}
