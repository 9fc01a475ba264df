//! The console's message catalogue: every text of every page, in Danish and English. The
//! language comes from the `cb_lang` cookie (set by the language switch), else from the
//! browser's `Accept-Language`, else Danish. A message without a text in one language does not
//! compile.

/// A language of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Da,
    En,
}

impl Lang {
    /// The `lang` attribute and the cookie value.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Da => "da",
            Lang::En => "en",
        }
    }

    pub fn parse(s: &str) -> Option<Lang> {
        match s.trim().to_ascii_lowercase().as_str() {
            "da" => Some(Lang::Da),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// The other language (the switch offers it).
    pub fn other(self) -> Lang {
        match self {
            Lang::Da => Lang::En,
            Lang::En => Lang::Da,
        }
    }

    /// The preferred of the two by an `Accept-Language` header (quality values honoured; the
    /// first listed wins a tie); `None` when it names neither.
    pub fn from_accept_language(header: &str) -> Option<Lang> {
        let mut best: Option<(f32, Lang)> = None;
        for part in header.split(',') {
            let mut pieces = part.split(';');
            let tag = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = pieces
                .find_map(|p| p.trim().strip_prefix("q=").map(str::to_owned))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let primary = tag.split('-').next().unwrap_or("");
            let lang = match primary {
                "da" | "nb" | "no" | "nn" => Lang::Da,
                "en" => Lang::En,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, lang));
            }
        }
        best.map(|(_, l)| l)
    }

    /// The text of a message in this language.
    pub fn t(self, m: Msg) -> &'static str {
        let (da, en) = m.texts();
        match self {
            Lang::Da => da,
            Lang::En => en,
        }
    }
}

macro_rules! catalogue {
    ($($key:ident => ($da:literal, $en:literal),)*) => {
        /// Every text the console shows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Msg { $($key,)* }

        impl Msg {
            /// (Danish, English).
            pub fn texts(self) -> (&'static str, &'static str) {
                match self { $(Msg::$key => ($da, $en),)* }
            }

            /// Every message (the tests check that none is empty in either language).
            pub const ALL: &'static [Msg] = &[$(Msg::$key,)*];
        }
    };
}

catalogue! {
    Product => ("carebridge – tværsektorielt overblik", "carebridge – cross-sector overview"),
    SkipToContent => ("Spring til indhold", "Skip to content"),
    MainNav => ("Hovedmenu", "Main menu"),
    NavInbox => ("Advarsler", "Alerts"),
    SignedInAs => ("Logget ind som", "Signed in as"),
    SignOut => ("Log ud", "Sign out"),
    OtherLanguage => ("English", "Dansk"),
    InboxTitle => ("Åbne advarsler for dine patienter", "Open alerts for your patients"),
    InboxIntro => (
        "Advarsler om fragmenteret behandling for de patienter, du har en behandlingsrelation til. Den øverste alvorlighed er fremhævet.",
        "Alerts about fragmented care for the patients you have a treatment relationship with. The highest severity is highlighted."
    ),
    Filters => ("Filtrér", "Filter"),
    FilterCode => ("Advarsel", "Alert"),
    FilterSector => ("Sektor", "Sector"),
    FilterStatus => ("Status", "Status"),
    FilterSeverity => ("Alvorlighed", "Severity"),
    FilterOwner => ("Ansvarlig", "Owner"),
    Any => ("Alle", "Any"),
    Apply => ("Anvend filter", "Apply filter"),
    ColSeverity => ("Alvorlighed", "Severity"),
    ColAlert => ("Advarsel", "Alert"),
    ColPatient => ("Patient", "Patient"),
    ColSectors => ("Sektorer", "Sectors"),
    ColAge => ("Rejst", "Raised"),
    ColStatus => ("Status", "Status"),
    ColOwner => ("Ansvarlig", "Owner"),
    ColAction => ("Handling", "Action"),
    Nobody => ("Ingen", "Nobody"),
    NoAlerts => ("Ingen åbne advarsler matcher.", "No open alerts match."),
    AlertCount => ("åbne advarsler", "open alerts"),
    LiveOn => ("Opdateres automatisk.", "Updates automatically."),
    LiveChanged => ("Listen er opdateret.", "The list has been updated."),
    SevHigh => ("Høj", "High"),
    SevModerate => ("Middel", "Moderate"),
    SevLow => ("Lav", "Low"),
    StPreliminary => ("Ny", "New"),
    StFinal => ("Kvitteret", "Acknowledged"),
    StAmended => ("Ændret", "Changed"),
    StCancelled => ("Lukket", "Closed"),
    Acknowledge => ("Kvittér", "Acknowledge"),
    AckReason => ("Begrundelse", "Reason"),
    AckComment => ("Kommentar (valgfri)", "Comment (optional)"),
    Acknowledged => ("Advarslen er kvitteret.", "The alert has been acknowledged."),
    OpenPatient => ("Patientens samlede plan", "The patient's total plan"),
    OpenAlert => ("Detaljer", "Details"),
    PatientTitle => ("Samlet behandlingsplan", "Total healthcare plan"),
    PatientIntro => (
        "Alt hvad sektorerne har registreret om patienten, side om side.",
        "Everything the sectors have recorded about the patient, side by side."
    ),
    Identifiers => ("Identifikatorer", "Identifiers"),
    Conditions => ("Diagnoser", "Conditions"),
    CarePlans => ("Planer", "Care plans"),
    Goals => ("Mål", "Goals"),
    Medications => ("Medicinkort", "Medication card"),
    CareTeams => ("Behandlingsteam", "Care team"),
    Messages => ("Åbne henvendelser", "Open messages"),
    OpenAlerts => ("Åbne advarsler", "Open alerts"),
    Coordinator => ("Koordinator", "Coordinator"),
    NoRecords => ("Intet registreret.", "Nothing recorded."),
    Period => ("Periode", "Period"),
    Codes => ("Koder", "Codes"),
    Mapped => ("Samme diagnose i andre kodesystemer", "The same condition in other code systems"),
    Drug => ("Lægemiddel", "Drug"),
    Dosage => ("Dosering", "Dosage"),
    Prescriber => ("Sektor", "Sector"),
    Duplicate => ("Dobbeltmedicinering", "Duplicate medication"),
    ClassDuplicate => ("Samme lægemiddelklasse", "Same drug class"),
    Since => ("siden", "since"),
    Status => ("Status", "Status"),
    AlertTitle => ("Advarsel", "Alert"),
    Implicated => ("Berørte registreringer", "Records involved"),
    Rule => ("Reglen", "The rule"),
    RuleSource => ("Fra docs/alerts.md (engelsk)", "From docs/alerts.md"),
    History => ("Forløb", "History"),
    EvRaised => ("Rejst", "Raised"),
    EvUpdated => ("Senest ændret", "Last changed"),
    EvAcknowledged => ("Kvitteret", "Acknowledged"),
    EvClosed => ("Lukket", "Closed"),
    WhatToDo => ("Hvad skal du gøre", "What to do"),
    Detail => ("Beskrivelse", "Description"),
    SignInTitle => ("Log ind", "Sign in"),
    SignInIntro => (
        "Log ind med din organisations login. I demoen bruger du et af de engangslinks, som carebridge demo udskriver.",
        "Sign in with your organisation's login. In the demo, use one of the one-time links that carebridge demo prints."
    ),
    LinkRefused => (
        "Linket er allerede brugt eller udløbet. Bed om et nyt.",
        "This sign-in link has already been used or has expired. Ask for a new one."
    ),
    SignInOidc => ("Log ind med din organisations login", "Sign in with your organisation's login"),
    SignInFailed => ("Login lykkedes ikke. Prøv igen.", "The sign-in did not succeed. Please try again."),
    SignedIn => ("Du er logget ind.", "You are signed in."),
    Continue => ("Fortsæt til advarslerne", "Continue to the alerts"),
    SessionEnded => ("Din session er udløbet. Log ind igen.", "Your session has ended. Please sign in again."),
    Forbidden => ("Du har ikke adgang til dette.", "You do not have access to this."),
    NotFound => ("Findes ikke.", "Not found."),
    BadForm => ("Formularen kunne ikke bruges.", "The form could not be used."),
    CsrfRefused => (
        "Formularen var udløbet eller ikke sendt fra konsollen. Genindlæs siden og prøv igen.",
        "The form had expired or was not sent from the console. Reload the page and try again."
    ),
    UnknownReason => ("Vælg en af begrundelserne.", "Choose one of the reasons."),
    ServerError => ("Der opstod en fejl. Prøv igen.", "Something went wrong. Please try again."),
    BackToInbox => ("Tilbage til advarsler", "Back to alerts"),
    CodeDupGen => ("Dobbeltmedicinering", "Duplicate medication"),
    CodeDupCls => ("Dobbelt lægemiddelklasse", "Duplicate therapeutic class"),
    CodePlans => ("Modstridende planer", "Conflicting care plans"),
    CodeCondStatus => ("Modstridende diagnosestatus", "Condition status conflict"),
    CodeUnaddressed => ("Diagnose uden plan", "Unaddressed condition"),
    CodeNoCoordinator => ("Ingen koordinator", "No care coordinator"),
    CodeUnanswered => ("Ubesvaret henvendelse", "Unanswered communication"),
    CodePolypharmacy => ("Polyfarmaci", "Polypharmacy"),
    DoDupGen => (
        "Aftal med den anden sektor, hvilken ordination der skal fortsætte, og seponér den anden.",
        "Agree with the other sector which prescription continues, and stop the other one."
    ),
    DoDupCls => (
        "Vurdér om begge lægemidler i klassen er tilsigtet; ellers afstem med den ordinerende sektor.",
        "Check whether both drugs of the class are intended; otherwise reconcile with the prescribing sector."
    ),
    DoPlans => (
        "Afstem planerne med den anden sektor, så patienten kun har én gældende plan for aktiviteten.",
        "Reconcile the plans with the other sector so that the patient has one plan for the activity."
    ),
    DoCondStatus => (
        "Afklar diagnosens status med den sektor, der har registreret den anderledes.",
        "Clarify the condition's status with the sector that records it differently."
    ),
    DoUnaddressed => (
        "Sørg for at en plan adresserer diagnosen, eller registrér at den ikke kræver en.",
        "Make sure a plan addresses the condition, or record that it needs none."
    ),
    DoNoCoordinator => (
        "Udpeg en koordinator i patientens behandlingsteam.",
        "Name a coordinator in the patient's care team."
    ),
    DoUnanswered => ("Besvar henvendelsen eller følg op hos afsenderen.", "Answer the message or follow up with its sender."),
    DoPolypharmacy => (
        "Gennemgå den samlede medicin med patienten og de ordinerende sektorer.",
        "Review all medication with the patient and the prescribing sectors."
    ),

    // ---- The auditor's and IT staff's console (audit_pages.rs, it_pages.rs) ----
    NavAuditSearch => ("Søg i loggen", "Search the log"),
    NavVerify => ("Kæden", "The chain"),
    NavAccess => ("Adgangsrapport", "Access report"),
    NavBreakGlass => ("Nødadgange", "Break-the-glass"),
    AuditSearchTitle => ("Søg i adgangsloggen", "Search the access log"),
    AuditSearchIntro => (
        "Find hvem der har læst, skrevet eller sendt data, hvornår og på hvilket grundlag. CPR-nummeret sendes i formularen, aldrig i adressen. Hver søgning registreres selv i loggen.",
        "Find who read, wrote or sent data, when and on what basis. The CPR number is sent in the form, never in the address. Every search is itself recorded in the log."
    ),
    FieldCpr => ("Patientens CPR-nummer", "The patient's CPR number"),
    FieldFrom => ("Fra dato", "From date"),
    FieldTo => ("Til dato", "To date"),
    FieldClient => ("Klient", "Client"),
    FieldPerson => ("Person (system|værdi)", "Person (system|value)"),
    FieldAction => ("Handling", "Action"),
    FieldOutcome => ("Udfald", "Outcome"),
    FieldBasis => ("Grundlag (begyndelse)", "Basis (beginning)"),
    Search => ("Søg", "Search"),
    ExportResult => ("Hent resultatet (NDJSON)", "Download the result (NDJSON)"),
    EventCount => ("hændelser i alt", "events in all"),
    ColTime => ("Tidspunkt", "Time"),
    ColWho => ("Hvem", "Who"),
    ColWhat => ("Hvad", "What"),
    ColOutcome => ("Udfald", "Outcome"),
    ColBasis => ("Grundlag", "Basis"),
    ColSeq => ("Nr.", "Seq"),
    ColSubject => ("Patient (gateway-id)", "Patient (gateway id)"),
    NoEvents => ("Ingen hændelser matcher.", "No events match."),
    PrevPage => ("Forrige side", "Previous page"),
    NextPage => ("Næste side", "Next page"),
    PageOf => ("Side", "Page"),
    VerifyTitle => ("Kontrol af loggens kæde", "Verification of the log's chain"),
    VerifyIntro => (
        "Hver række i loggen bærer hashen af den forrige. Kontrollen gennemgår hele kæden; den registreres selv i loggen.",
        "Every row of the log carries the hash of the one before. The check walks the whole chain and is itself recorded in the log."
    ),
    ChainIntact => ("Kæden er intakt.", "The chain is intact."),
    ChainBroken => ("Kæden er brudt.", "The chain is broken."),
    ChainRows => ("Rækker kontrolleret", "Rows checked"),
    ChainHead => ("Hoved (nr. og hash)", "Head (seq and hash)"),
    ChainFirst => ("Første række", "First row"),
    LastCheckpoint => ("Seneste signerede kontrolpunkt", "Last signed checkpoint"),
    NoCheckpoint => ("Intet kontrolpunkt er signeret endnu.", "No checkpoint has been signed yet."),
    FirstBroken => ("Første brudte led", "First broken link"),
    Problem => ("Problem", "Problem"),
    AccessTitle => ("Adgangsrapport", "Access report"),
    AccessIntro => (
        "Hvem har tilgået en patients data, hvornår og på hvilket grundlag (givne og afviste adgange) – eller hvad en person har gjort.",
        "Who accessed a patient's data, when and on what basis (granted and refused) – or what one person did."
    ),
    AccessByPatient => ("Pr. patient", "Per patient"),
    AccessByPerson => ("Pr. person", "Per person"),
    ShowReport => ("Vis rapport", "Show report"),
    Granted => ("Givet", "Granted"),
    Refused => ("Afvist", "Refused"),
    ColRecords => ("Poster", "Records"),
    ColPurpose => ("Formål", "Purpose"),
    NoAccesses => ("Ingen adgange registreret.", "No accesses recorded."),
    BreakGlassTitle => ("Nødadgange til gennemgang", "Break-the-glass accesses to review"),
    BreakGlassIntro => (
        "Hver nødadgang skal gennemgås af en revisor med en note. Listen registreres selv i loggen.",
        "Every break-the-glass access is to be reviewed by an auditor with a note. The list is itself recorded in the log."
    ),
    Unreviewed => ("Ikke gennemgået", "Not reviewed"),
    ReviewedList => ("Gennemgået", "Reviewed"),
    ColGrantee => ("Modtager", "Grantee"),
    ColReason => ("Begrundelse", "Reason"),
    ColGranted => ("Givet", "Granted"),
    ColExpires => ("Udløber", "Expires"),
    ColReview => ("Gennemgang", "Review"),
    ReviewNote => ("Note til gennemgangen", "Review note"),
    RecordReview => ("Registrér gennemgang", "Record the review"),
    NoGrants => ("Ingen nødadgange.", "No break-the-glass grants."),
    Show => ("Vis", "Show"),
    NavBoard => ("Sektorer", "Sectors"),
    NavDead => ("Fejlede leverancer", "Dead letters"),
    NavMessages => ("Meddelelser", "Messages"),
    NavSystem => ("System", "System"),
    BoardTitle => ("Sektorernes endepunkter", "Sector endpoints"),
    BoardIntro => (
        "Leverancer til hver sektor: tilstand, kø og seneste fejl. En sektor meldes fejlende én gang og rask igen én gang.",
        "Deliveries to each sector: state, queue and last error. A sector is reported failing once and healthy again once."
    ),
    StateHealthy => ("Rask", "Healthy"),
    StateFailing => ("Fejler", "Failing"),
    StateIdle => ("Inaktiv", "Idle"),
    StatePaused => ("På pause", "Paused"),
    StateSendsOnly => ("Sender kun", "Sends only"),
    ColSectorName => ("Sektor", "Sector"),
    ColState => ("Tilstand", "State"),
    ColQueue => ("Ventende / døde", "Waiting / dead"),
    ColOldest => ("Ældste ventende", "Oldest waiting"),
    ColLastError => ("Seneste fejl", "Last error"),
    ColStreak => ("Fejl i træk", "Failures in a row"),
    Col24h => ("Leveret / fejlet (24 t)", "Delivered / failed (24 h)"),
    ColPull => ("Hentet til / seneste hentning", "Pulled up to / last poll"),
    Seconds => ("sek.", "s"),
    DeadTitle => ("Fejlede leverancer", "Dead letters"),
    DeadIntro => (
        "Leverancer der er opgivet. Send én eller alle for en sektor igen med en begrundelse; det registreres i loggen.",
        "Deliveries that were given up. Replay one, or all of a sector, with a reason; it is recorded in the log."
    ),
    Replay => ("Send igen", "Replay"),
    ReplayAll => ("Send alle sektorens igen", "Replay all of the sector"),
    Reason => ("Begrundelse", "Reason"),
    NoDead => ("Ingen fejlede leverancer.", "No dead letters."),
    Queued => ("Lagt i kø igen", "Queued again"),
    MessagesTitle => ("Meddelelser i udbakken", "Messages in the outbox"),
    MessagesIntro => (
        "Søg i udbakken efter metadata. Indholdet vises aldrig.",
        "Search the outbox by metadata. Contents are never shown."
    ),
    FieldTarget => ("Til sektor", "To sector"),
    FieldType => ("Ressourcetype", "Resource type"),
    FieldState => ("Tilstand", "State"),
    FieldResourceId => ("Ressource-id (gateway)", "Resource id (gateway)"),
    ColEntry => ("Nr.", "Entry"),
    ColResource => ("Ressource", "Resource"),
    ColFromTo => ("Fra → til", "From → to"),
    ColAttempts => ("Forsøg", "Attempts"),
    ColWritten => ("Skrevet", "Written"),
    ResendTo => ("Send igen til", "Resend to"),
    Resend => ("Send igen", "Resend"),
    NoMessages => ("Ingen meddelelser matcher.", "No messages match."),
    SystemTitle => ("Gatewayen", "The gateway"),
    Version => ("Version", "Version"),
    ConfigFile => ("Konfigurationsfil", "Configuration file"),
    Started => ("Startet", "Started"),
    Probes => ("Kontrol af endepunkter", "Endpoint probes"),
    ProbesIntro => (
        "Henter hver sektors CapabilityStatement og kontrollerer, at den understøtter det, der sendes og hentes (som carebridge check-config).",
        "Fetches each sector's CapabilityStatement and checks that it supports what is sent and pulled (as carebridge check-config does)."
    ),
    RunProbes => ("Kontrollér endepunkterne nu", "Probe the endpoints now"),
    ProbeOk => ("OK", "OK"),
    ProbeFailed => ("Fejl", "Failed"),
    Done => ("Udført.", "Done."),
}

/// The catalogue's name and advice for an alert code (`None` for a code it does not know).
pub fn code_texts(code: &str) -> Option<(Msg, Msg)> {
    Some(match code {
        "DUPTHPGEN" => (Msg::CodeDupGen, Msg::DoDupGen),
        "DUPTHPCLS" => (Msg::CodeDupCls, Msg::DoDupCls),
        "conflicting-plans" => (Msg::CodePlans, Msg::DoPlans),
        "condition-status-conflict" => (Msg::CodeCondStatus, Msg::DoCondStatus),
        "unaddressed-condition" => (Msg::CodeUnaddressed, Msg::DoUnaddressed),
        "no-care-coordinator" => (Msg::CodeNoCoordinator, Msg::DoNoCoordinator),
        "unanswered-communication" => (Msg::CodeUnanswered, Msg::DoUnanswered),
        "polypharmacy" => (Msg::CodePolypharmacy, Msg::DoPolypharmacy),
        _ => return None,
    })
}

/// The alert codes, in the order the filter lists them.
pub const CODES: [&str; 8] = [
    "DUPTHPGEN",
    "DUPTHPCLS",
    "conflicting-plans",
    "condition-status-conflict",
    "unaddressed-condition",
    "no-care-coordinator",
    "unanswered-communication",
    "polypharmacy",
];

/// A DetectedIssue severity's text.
pub fn severity(s: &str) -> Msg {
    match s {
        "high" => Msg::SevHigh,
        "moderate" => Msg::SevModerate,
        _ => Msg::SevLow,
    }
}

/// A DetectedIssue status's text.
pub fn status(s: &str) -> Msg {
    match s {
        "final" => Msg::StFinal,
        "amended" => Msg::StAmended,
        "cancelled" => Msg::StCancelled,
        _ => Msg::StPreliminary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_has_both_texts() {
        for m in Msg::ALL {
            let (da, en) = m.texts();
            assert!(!da.trim().is_empty() && !en.trim().is_empty(), "{m:?}");
        }
        for c in CODES {
            assert!(code_texts(c).is_some(), "{c}");
        }
    }

    #[test]
    fn accept_language_picks_the_preferred_of_the_two() {
        assert_eq!(
            Lang::from_accept_language("da-DK,da;q=0.9,en;q=0.8"),
            Some(Lang::Da)
        );
        assert_eq!(
            Lang::from_accept_language("en-GB,en;q=0.9,da;q=0.5"),
            Some(Lang::En)
        );
        assert_eq!(
            Lang::from_accept_language("de-DE,en;q=0.3,da;q=0.7"),
            Some(Lang::Da)
        );
        assert_eq!(Lang::from_accept_language("fr, de"), None);
        assert_eq!(Lang::from_accept_language("en;q=0, da;q=0"), None);
    }
}
