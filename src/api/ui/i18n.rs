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
    RuleSource => (
        "Med almindelige ord, som i docs/alerts.md. Regelversion:",
        "In plain words, as in docs/alerts.md. Rule version:"
    ),
    History => ("Forløb", "History"),
    EvRaised => ("Rejst", "Raised"),
    EvUpdated => ("Senest ændret", "Last changed"),
    EvAcknowledged => ("Kvitteret", "Acknowledged"),
    EvClosed => ("Lukket", "Closed"),
    EvReopened => ("Genåbnet", "Reopened"),
    EvAmended => ("Ændret", "Amended"),
    EvSnoozed => ("Udsat til", "Snoozed until"),
    EvBy => ("af", "by"),
    EvDetection => ("carebridge (automatisk)", "carebridge (automatic)"),
    EvAdded => ("Nye registreringer", "Records added"),
    EvRemoved => ("Ikke længere berørt", "No longer involved"),
    NoHistory => ("Intet forløb registreret.", "No history recorded."),
    Snooze => ("Udsæt", "Snooze"),
    SnoozeUntil => ("Udsæt til (dato)", "Snooze until (date)"),
    SnoozeComment => ("Kommentar (valgfri)", "Comment (optional)"),
    SnoozeHint => (
        "Advarslen forsvinder fra indbakken til datoen, eller indtil den ændrer sig.",
        "The alert leaves the inbox until the date, or until it changes."
    ),
    SnoozeBadDate => ("Vælg en dato efter i dag.", "Choose a date after today."),
    StSnoozed => ("Udsat", "Snoozed"),
    SnoozedUntil => ("udsat til", "snoozed until"),
    NextPage => ("Næste side", "Next page"),
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
    CodeStaleOrder => ("Forældet ordination", "Stale prescription"),
    CodeNeedsAssessment => ("Behovsvurdering mangler", "Needs assessment overdue"),
    DoStaleOrder => (
        "Afslut eller forny ordinationen i den sektor, der har ordineret den.",
        "Complete or renew the prescription in the sector that prescribed it."
    ),
    DoNeedsAssessment => (
        "Aftal hvem der laver en systematisk behovsvurdering med patienten, og registrér den.",
        "Agree who carries out a systematic needs assessment with the patient, and record it."
    ),
    RuleStaleOrder => (
        "En ordination står stadig som aktiv, selv om dens gyldighedsperiode er udløbet, eller selv om den indlæggelse, den blev givet under, er afsluttet. Den tæller ikke med i de andre medicinadvarsler. Én advarsel pr. ordination.",
        "A prescription is still active although its validity period has ended, or although the inpatient stay it was ordered in has ended. It does not count for the other medication alerts. One alert per prescription."
    ),
    RuleNeedsAssessment => (
        "Patienten har aktive kroniske diagnoser registreret af to eller flere sektorer, og der er ikke registreret en systematisk behovsvurdering (fx en FSIII-funktionsvurdering eller et konfigureret spørgeskema) inden for den konfigurerede periode (som standard 12 måneder). Advarslen siger, hvornår den seneste var.",
        "The patient has active chronic conditions recorded by two or more sectors, and no systematic needs assessment (for example an FSIII functional assessment or a configured questionnaire) is recorded within the configured period (12 months by default). The alert says when the last one was."
    ),
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
    RuleDupGen => (
        "Det samme aktive indholdsstof (ATC niveau 5, også som del af et kombinationspræparat) eller det samme præparat (samme kode) er aktivt to gange, fra forskellige sektorer eller ordinatører og givet på samme måde (fx gennem munden). En patientoplysning om medicin tæller med, medmindre den beskriver en af ordinationerne. En creme og tabletter med samme stof er ikke dobbeltmedicinering. Én advarsel pr. stof og administrationsvej.",
        "The same active ingredient (ATC level 5, also as part of a combination product) or the same product (the same code) is active twice, from different sectors or prescribers and given the same way (for example by mouth). A medication statement counts unless it reports one of the prescriptions. A cream and tablets of the same ingredient are not a duplicate. One alert per ingredient and route."
    ),
    RuleDupCls => (
        "To forskellige indholdsstoffer fra samme lægemiddelklasse (ATC niveau 4, fx to ACE-hæmmere) er aktive samtidig og gives på samme måde, uanset hvem der har ordineret dem. Én advarsel pr. klasse og administrationsvej.",
        "Two different ingredients of the same drug class (ATC level 4, for example two ACE inhibitors) are active at the same time and given the same way, whoever prescribed them. One alert per class and route."
    ),
    RulePlans => (
        "To aktive planer fra forskellige sektorer er uenige: den ene stopper eller forbyder en aktivitet eller et lægemiddel, som den anden fortsætter (høj), eller deres mål for samme måling kan ikke begge nås, fx HbA1c under 48 i den ene og 58–64 mmol/mol i den anden (middel).",
        "Two active care plans of different sectors disagree: one stops or forbids an activity or a medication that the other keeps going (high), or their goals for the same measurement cannot both be met, for example HbA1c below 48 in one and 58–64 mmol/mol in the other (moderate)."
    ),
    RuleCondStatus => (
        "Den samme diagnose (også på tværs af kodesystemer og hierarkier) er aktiv i én sektor og afsluttet (helbredt, inaktiv, i remission eller afkræftet) i en anden. En af de to registreringer er forældet. Et tidligere forløb, der sluttede før det aktive begyndte, er ikke en konflikt.",
        "The same condition (also across code systems and hierarchies) is active in one sector and ended (resolved, inactive, in remission or refuted) in another. One of the two records is out of date. A past episode that ended before the active one began is not a conflict."
    ),
    RuleUnaddressed => (
        "En aktiv kronisk diagnose, som intet adresserer: ingen aktiv plan i nogen sektor (direkte, som begrundelse for en aktivitet eller via samme diagnose i en anden sektor) og ingen aktiv ordination eller henvisning med diagnosen som begrundelse. Hvilke diagnoser der er kroniske, er konfiguration.",
        "An active chronic condition that nothing addresses: no active care plan of any sector (directly, as the reason of an activity, or through the same condition recorded by another sector) and no active prescription or referral giving the condition as its reason. Which conditions are chronic is configuration."
    ),
    RuleNoCoordinator => (
        "Patienten har aktive planer i to eller flere sektorer, og intet medlem af et aktivt behandlingsteam har en koordinerende rolle.",
        "The patient has active care plans in two or more sectors, and no member of any active care team has a coordinating role."
    ),
    RuleUnanswered => (
        "En henvendelse, der beder om svar, blev sendt for mere end den konfigurerede frist siden (som standard 72 timer), og ingen henvendelse fra nogen sektor besvarer den (med henvisning til spørgsmålet, til sektorens kopi af det eller til dets identifikator). Advarslen kommer, når fristen udløber, også uden ny registrering.",
        "A message that asks for a reply was sent longer ago than the configured limit (72 hours by default), and no message of any sector answers it (by reference to the question, to the sector's copy of it or to its identifier). The alert comes when the limit passes, even without a new record."
    ),
    RulePolypharmacy => (
        "Patienten får det konfigurerede antal (som standard 10) eller flere forskellige aktive indholdsstoffer fra alle sektorer tilsammen. Ingen enkelt sektor kan se det.",
        "The patient takes the configured number (10 by default) or more different active ingredients across all sectors together. No single sector can see this."
    ),
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

/// The catalogue's texts of an alert code: its name, the rule in plain words, and what to do
/// (`None` for a code it does not know).
pub fn code_texts(code: &str) -> Option<CodeTexts> {
    let (name, rule, todo) = match code {
        "DUPTHPGEN" => (Msg::CodeDupGen, Msg::RuleDupGen, Msg::DoDupGen),
        "DUPTHPCLS" => (Msg::CodeDupCls, Msg::RuleDupCls, Msg::DoDupCls),
        "conflicting-plans" => (Msg::CodePlans, Msg::RulePlans, Msg::DoPlans),
        "condition-status-conflict" => {
            (Msg::CodeCondStatus, Msg::RuleCondStatus, Msg::DoCondStatus)
        }
        "unaddressed-condition" => (
            Msg::CodeUnaddressed,
            Msg::RuleUnaddressed,
            Msg::DoUnaddressed,
        ),
        "no-care-coordinator" => (
            Msg::CodeNoCoordinator,
            Msg::RuleNoCoordinator,
            Msg::DoNoCoordinator,
        ),
        "unanswered-communication" => (Msg::CodeUnanswered, Msg::RuleUnanswered, Msg::DoUnanswered),
        "polypharmacy" => (
            Msg::CodePolypharmacy,
            Msg::RulePolypharmacy,
            Msg::DoPolypharmacy,
        ),
        "stale-order" => (Msg::CodeStaleOrder, Msg::RuleStaleOrder, Msg::DoStaleOrder),
        "needs-assessment-overdue" => (
            Msg::CodeNeedsAssessment,
            Msg::RuleNeedsAssessment,
            Msg::DoNeedsAssessment,
        ),
        _ => return None,
    };
    Some(CodeTexts { name, rule, todo })
}

/// An alert code's texts in the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeTexts {
    pub name: Msg,
    /// When the rule raises the alert, in plain words (as `docs/alerts.md` says it).
    pub rule: Msg,
    /// What the care team can do about it.
    pub todo: Msg,
}

/// The alert codes, in the order the filter lists them.
pub const CODES: [&str; 10] = [
    "DUPTHPGEN",
    "DUPTHPCLS",
    "conflicting-plans",
    "condition-status-conflict",
    "unaddressed-condition",
    "no-care-coordinator",
    "unanswered-communication",
    "polypharmacy",
    "stale-order",
    "needs-assessment-overdue",
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
        "snoozed" => Msg::StSnoozed,
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

    /// The codes the detectors can raise: every string literal after an `…_CODE_SYSTEM,` in
    /// the sources of `src/detect/`.
    fn detector_codes() -> Vec<String> {
        let sources = [
            include_str!("../../detect/medication.rs"),
            include_str!("../../detect/plans.rs"),
            include_str!("../../detect/conditions.rs"),
            include_str!("../../detect/team.rs"),
            include_str!("../../detect/communication.rs"),
            include_str!("../../detect/needs.rs"),
        ];
        let mut codes = Vec::new();
        for src in sources {
            for (i, _) in src.match_indices("_CODE_SYSTEM,") {
                let rest = src[i + "_CODE_SYSTEM,".len()..].trim_start();
                if let Some(lit) = rest.strip_prefix('"') {
                    codes.push(lit[..lit.find('"').unwrap()].to_owned());
                }
            }
        }
        codes.sort();
        codes.dedup();
        codes
    }

    #[test]
    fn every_detector_code_has_its_rule_and_advice_in_both_languages_and_a_section_in_the_docs() {
        let doc = include_str!("../../../docs/alerts.md");
        let codes = detector_codes();
        assert_eq!(codes.len(), 10, "{codes:?}");
        let mut listed: Vec<String> = CODES.iter().map(|c| (*c).to_owned()).collect();
        listed.sort();
        assert_eq!(codes, listed, "the filter lists every detector code");
        for c in &codes {
            let t = code_texts(c).unwrap_or_else(|| panic!("{c} has no texts"));
            for m in [t.name, t.rule, t.todo] {
                let (da, en) = m.texts();
                assert!(
                    !da.trim().is_empty() && !en.trim().is_empty() && da != en,
                    "{c}: {m:?}"
                );
            }
            let heading = doc
                .lines()
                .find(|l| l.starts_with("### ") && l.contains(&format!("`{c}`")));
            assert!(heading.is_some(), "docs/alerts.md has no section for {c}");
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
