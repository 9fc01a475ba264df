//! The auditor's pages as maud templates: the audit search (a POST form: the CPR number never
//! enters a URL) with its pages and export, the chain's verification, the access report and
//! the break-the-glass review queue. Texts from the catalogue; every form carries the CSRF token.

use maud::{Markup, html};

use super::i18n::{Lang, Msg};
use crate::audit::AuditRow;
use crate::audit::chain::Report;
use crate::gateway::break_glass::{AccessLine, GrantView};

/// The auditor's navigation.
pub const NAV: [(&str, Msg); 4] = [
    ("/ui/audit/search", Msg::NavAuditSearch),
    ("/ui/audit/verify", Msg::NavVerify),
    ("/ui/audit/access", Msg::NavAccess),
    ("/ui/audit/break-glass", Msg::NavBreakGlass),
];

/// The audit search form's values (all optional), as posted.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct AuditForm {
    #[serde(default)]
    pub cpr: String,
    #[serde(default)]
    pub from: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub client: String,
    #[serde(default)]
    pub person: String,
    #[serde(default)]
    pub sector: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub outcome: String,
    #[serde(default)]
    pub basis: String,
    #[serde(default)]
    pub page: i64,
}

impl AuditForm {
    fn fields(&self) -> [(&'static str, &str); 9] {
        [
            ("cpr", &self.cpr),
            ("from", &self.from),
            ("to", &self.to),
            ("client", &self.client),
            ("person", &self.person),
            ("sector", &self.sector),
            ("action", &self.action),
            ("outcome", &self.outcome),
            ("basis", &self.basis),
        ]
    }
}

fn input(lang: Lang, name: &str, label: Msg, kind: &str, value: &str) -> Markup {
    let id = format!("a-{name}");
    html! {
        div class="field" {
            label for=(id) { (lang.t(label)) }
            input id=(id) type=(kind) name=(name) value=(value) autocomplete="off";
        }
    }
}

fn choice(lang: Lang, name: &str, label: Msg, current: &str, options: &[&str]) -> Markup {
    let id = format!("a-{name}");
    html! {
        div class="field" {
            label for=(id) { (lang.t(label)) }
            select id=(id) name=(name) {
                option value="" selected[current.is_empty()] { (lang.t(Msg::Any)) }
                @for o in options { option value=(o) selected[current == *o] { (o) } }
            }
        }
    }
}

fn hidden(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// The search form.
fn search_form(lang: Lang, f: &AuditForm, sectors: &[&str], csrf: &str) -> Markup {
    let actions = ["C", "R", "U", "D", "E"];
    let outcomes = ["0", "4", "8", "12"];
    html! {
        form class="filters" method="post" action="/ui/audit/search" {
            (hidden(csrf))
            fieldset {
                legend { (lang.t(Msg::Filters)) }
                (input(lang, "cpr", Msg::FieldCpr, "text", &f.cpr))
                (input(lang, "from", Msg::FieldFrom, "date", &f.from))
                (input(lang, "to", Msg::FieldTo, "date", &f.to))
                (input(lang, "client", Msg::FieldClient, "text", &f.client))
                (input(lang, "person", Msg::FieldPerson, "text", &f.person))
                (choice(lang, "sector", Msg::FilterSector, &f.sector, sectors))
                (choice(lang, "action", Msg::FieldAction, &f.action, &actions))
                (choice(lang, "outcome", Msg::FieldOutcome, &f.outcome, &outcomes))
                (input(lang, "basis", Msg::FieldBasis, "text", &f.basis))
                button type="submit" { (lang.t(Msg::Search)) }
            }
        }
    }
}

/// Who a row names: the person, else the client.
fn who(r: &AuditRow) -> String {
    match (&r.person, &r.client_id) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => c.clone(),
        (None, None) => "carebridge".into(),
    }
}

/// The rows found.
pub fn event_table(lang: Lang, rows: &[AuditRow]) -> Markup {
    html! {
        @if rows.is_empty() { p { (lang.t(Msg::NoEvents)) } } @else {
            table id="events" {
                caption class="visually-hidden" { (lang.t(Msg::AuditSearchTitle)) }
                thead { tr {
                    th scope="col" { (lang.t(Msg::ColSeq)) }
                    th scope="col" { (lang.t(Msg::ColTime)) }
                    th scope="col" { (lang.t(Msg::ColWho)) }
                    th scope="col" { (lang.t(Msg::ColWhat)) }
                    th scope="col" { (lang.t(Msg::FilterSector)) }
                    th scope="col" { (lang.t(Msg::ColSubject)) }
                    th scope="col" { (lang.t(Msg::ColOutcome)) }
                    th scope="col" { (lang.t(Msg::ColBasis)) }
                } }
                tbody { @for r in rows {
                    tr data-seq=(r.seq) {
                        td { (r.seq) }
                        td { time datetime=(r.recorded) { (r.recorded) } }
                        td { (who(r)) }
                        td { (r.interaction) " " (r.entities.first().map_or("", String::as_str))
                             @if r.entities.len() > 1 { " (+" (r.entities.len() - 1) ")" } }
                        td { (r.sector.as_deref().unwrap_or("")) @if let Some(t) = &r.target_sector { " → " (t) } }
                        td { (r.patient_id.as_deref().unwrap_or("")) }
                        td { (r.outcome) }
                        td { (r.basis.as_deref().unwrap_or("")) }
                    }
                } }
            }
        }
    }
}

/// The paging and export buttons: one form carrying the search (in the body, never the URL).
fn paging(lang: Lang, f: &AuditForm, total: i64, page_rows: i64, csrf: &str) -> Markup {
    let last = (total.max(1) - 1) / page_rows;
    html! {
        form class="pages" method="post" action="/ui/audit/search" {
            (hidden(csrf))
            @for (name, value) in f.fields() { input type="hidden" name=(name) value=(value); }
            nav class="pages" aria-label=(lang.t(Msg::PageOf)) {
                @if f.page > 0 { button type="submit" name="page" value=(f.page - 1) { (lang.t(Msg::PrevPage)) } }
                span { (lang.t(Msg::PageOf)) " " (f.page + 1) " / " (last + 1) }
                @if f.page < last { button type="submit" name="page" value=(f.page + 1) { (lang.t(Msg::NextPage)) } }
                button type="submit" id="export" formaction="/ui/audit/export" { (lang.t(Msg::ExportResult)) }
            }
        }
    }
}

/// The search page, with its result when a search was made.
pub fn search(
    lang: Lang,
    f: &AuditForm,
    sectors: &[&str],
    found: Option<(&[AuditRow], i64)>,
    page_rows: i64,
    csrf: &str,
) -> Markup {
    html! {
        h1 { (lang.t(Msg::AuditSearchTitle)) }
        p { (lang.t(Msg::AuditSearchIntro)) }
        (search_form(lang, f, sectors, csrf))
        @if let Some((rows, total)) = found {
            section aria-labelledby="h-result" {
                h2 id="h-result" class="count" { (total) " " (lang.t(Msg::EventCount)) }
                (event_table(lang, rows))
                (paging(lang, f, total, page_rows, csrf))
            }
        }
    }
}

/// The verification page.
pub fn verify(lang: Lang, r: &Report, checkpoint: Option<&str>) -> Markup {
    html! {
        h1 { (lang.t(Msg::VerifyTitle)) }
        p { (lang.t(Msg::VerifyIntro)) }
        @if r.ok {
            p class="notice state-ok" role="status" id="chain-status" { (lang.t(Msg::ChainIntact)) }
        } @else {
            p class="notice state-bad" role="alert" id="chain-status" { (lang.t(Msg::ChainBroken)) }
        }
        dl class="facts" {
            dt { (lang.t(Msg::ChainRows)) } dd { (r.rows) }
            dt { (lang.t(Msg::ChainFirst)) } dd { (r.first_seq.map_or("—".into(), |s| s.to_string())) }
            dt { (lang.t(Msg::ChainHead)) }
            dd { (r.head_seq.map_or("—".into(), |s| s.to_string())) " " code { (r.head_hash.as_deref().unwrap_or("")) } }
            @if let Some(b) = &r.broken {
                dt { (lang.t(Msg::FirstBroken)) } dd id="broken-seq" { (b.seq) }
                dt { (lang.t(Msg::Problem)) } dd lang="en" { (b.problem) }
            }
            dt { (lang.t(Msg::LastCheckpoint)) }
            dd { @match checkpoint {
                Some(note) => pre { (note) },
                None => (lang.t(Msg::NoCheckpoint)),
            } }
        }
    }
}

/// The access report's forms.
fn access_forms(lang: Lang, cpr: &str, person: &str, csrf: &str) -> Markup {
    html! {
        div class="sectors" {
            form method="post" action="/ui/audit/access" {
                (hidden(csrf))
                fieldset { legend { (lang.t(Msg::AccessByPatient)) }
                    (input(lang, "cpr", Msg::FieldCpr, "text", cpr))
                    button type="submit" { (lang.t(Msg::ShowReport)) } }
            }
            form method="post" action="/ui/audit/access" {
                (hidden(csrf))
                fieldset { legend { (lang.t(Msg::AccessByPerson)) }
                    (input(lang, "person", Msg::FieldPerson, "text", person))
                    button type="submit" { (lang.t(Msg::ShowReport)) } }
            }
        }
    }
}

/// The report's content: per patient, or the person's rows.
pub enum AccessResult<'a> {
    None,
    Patient(&'a [AccessLine]),
    Person(&'a [AuditRow]),
}

fn access_lines(lang: Lang, lines: &[AccessLine]) -> Markup {
    html! {
        @if lines.is_empty() { p { (lang.t(Msg::NoAccesses)) } } @else {
            table id="accesses" {
                caption class="visually-hidden" { (lang.t(Msg::AccessTitle)) }
                thead { tr {
                    th scope="col" { (lang.t(Msg::ColTime)) }
                    th scope="col" { (lang.t(Msg::ColWho)) }
                    th scope="col" { (lang.t(Msg::ColWhat)) }
                    th scope="col" { (lang.t(Msg::ColOutcome)) }
                    th scope="col" { (lang.t(Msg::ColBasis)) }
                    th scope="col" { (lang.t(Msg::ColPurpose)) }
                    th scope="col" { (lang.t(Msg::ColRecords)) }
                } }
                tbody { @for a in lines { tr data-seq=(a.seq) {
                    td { (a.recorded) }
                    td { (a.person.clone().or_else(|| a.client.clone()).unwrap_or_default()) }
                    td { (a.interaction) }
                    td { (lang.t(if a.granted { Msg::Granted } else { Msg::Refused })) }
                    td { (a.basis.as_deref().unwrap_or("")) }
                    td { (a.purpose.as_deref().unwrap_or("")) }
                    td { (a.records) }
                } } }
            }
        }
    }
}

/// The access report page.
pub fn access(lang: Lang, cpr: &str, person: &str, found: AccessResult<'_>, csrf: &str) -> Markup {
    html! {
        h1 { (lang.t(Msg::AccessTitle)) }
        p { (lang.t(Msg::AccessIntro)) }
        (access_forms(lang, cpr, person, csrf))
        @match found {
            AccessResult::None => {},
            AccessResult::Patient(lines) => section aria-labelledby="h-report" {
                h2 id="h-report" { (lang.t(Msg::AccessByPatient)) } (access_lines(lang, lines)) },
            AccessResult::Person(rows) => section aria-labelledby="h-report" {
                h2 id="h-report" { (lang.t(Msg::AccessByPerson)) " " (person) } (event_table(lang, rows)) },
        }
    }
}

fn review_form(lang: Lang, g: &GrantView, csrf: &str) -> Markup {
    let id = format!("note-{}", g.id);
    html! {
        form class="ack" method="post" action={ "/ui/audit/break-glass/" (g.id) "/review" } {
            (hidden(csrf))
            label for=(id) { (lang.t(Msg::ReviewNote)) }
            input id=(id) type="text" name="note" required maxlength="2000";
            button type="submit" { (lang.t(Msg::RecordReview)) }
        }
    }
}

/// The break-the-glass review queue.
pub fn break_glass(lang: Lang, status: &str, grants: &[GrantView], csrf: &str) -> Markup {
    let statuses = [
        ("unreviewed", Msg::Unreviewed),
        ("reviewed", Msg::ReviewedList),
        ("all", Msg::Any),
    ];
    html! {
        h1 { (lang.t(Msg::BreakGlassTitle)) }
        p { (lang.t(Msg::BreakGlassIntro)) }
        form class="filters" method="get" action="/ui/audit/break-glass" {
            div class="field" {
                label for="bg-status" { (lang.t(Msg::Status)) }
                select id="bg-status" name="status" {
                    @for (code, m) in statuses { option value=(code) selected[status == code] { (lang.t(m)) } }
                }
            }
            button type="submit" { (lang.t(Msg::Show)) }
        }
        @if grants.is_empty() { p { (lang.t(Msg::NoGrants)) } } @else {
            table id="grants" {
                caption class="visually-hidden" { (lang.t(Msg::BreakGlassTitle)) }
                thead { tr {
                    th scope="col" { (lang.t(Msg::ColGrantee)) }
                    th scope="col" { (lang.t(Msg::ColSubject)) }
                    th scope="col" { (lang.t(Msg::ColReason)) }
                    th scope="col" { (lang.t(Msg::ColGranted)) }
                    th scope="col" { (lang.t(Msg::ColExpires)) }
                    th scope="col" { (lang.t(Msg::ColReview)) }
                } }
                tbody { @for g in grants { tr data-grant=(g.id) {
                    td { (g.grantee) br; span class="codes" { (g.client) } }
                    td { (g.patient) }
                    td { (g.reason_display) br; span class="codes" { (g.text) } }
                    td { (g.granted) }
                    td { (g.expires) }
                    td { @match (&g.reviewed, &g.review_note) {
                        (Some(when), note) => { (when) " – " (g.reviewer.as_deref().unwrap_or("")) ": " (note.as_deref().unwrap_or("")) },
                        (None, _) => (review_form(lang, g, csrf)),
                    } }
                } } }
            }
        }
    }
}
