//! Narrative safety: `Narrative.div` must be well-formed XHTML within the R4 narrative rules.
//!
//! - txt-1: only the basic HTML formatting elements and attributes (the list the HL7 validator
//!   keeps), no `script`, `style` elements, forms, frames, objects, no event attributes
//!   (`onclick`, …), no `javascript:`/`vbscript:` URLs;
//! - txt-2: some non-whitespace content (text or an image);
//! - the root is a `div` in the XHTML namespace; entities are XML's own and character
//!   references (XHTML in FHIR is XML: an HTML entity such as `&nbsp;` is undeclared).
//!
//! Diagnostics name the rule and the element or attribute, never the text.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";

/// The elements txt-1 allows (the HL7 validator's list).
fn allowed_element(name: &str) -> bool {
    matches!(
        name,
        "p" | "br"
            | "div"
            | "h1"
            | "h2"
            | "h3"
            | "h4"
            | "h5"
            | "h6"
            | "a"
            | "span"
            | "b"
            | "em"
            | "i"
            | "strong"
            | "small"
            | "big"
            | "tt"
            | "dfn"
            | "q"
            | "var"
            | "abbr"
            | "acronym"
            | "cite"
            | "blockquote"
            | "hr"
            | "address"
            | "bdo"
            | "kbd"
            | "sub"
            | "sup"
            | "ul"
            | "ol"
            | "li"
            | "dl"
            | "dt"
            | "dd"
            | "pre"
            | "table"
            | "caption"
            | "colgroup"
            | "col"
            | "thead"
            | "tr"
            | "tfoot"
            | "tbody"
            | "th"
            | "td"
            | "code"
            | "samp"
            | "img"
            | "map"
            | "area"
    )
}

/// The attributes txt-1 allows (the HL7 validator's list, with `xmlns`).
fn allowed_attribute(name: &str) -> bool {
    matches!(
        name,
        "title"
            | "style"
            | "class"
            | "id"
            | "lang"
            | "xml:lang"
            | "dir"
            | "accesskey"
            | "tabindex"
            | "colspan"
            | "rowspan"
            | "headers"
            | "scope"
            | "abbr"
            | "axis"
            | "span"
            | "width"
            | "height"
            | "align"
            | "valign"
            | "char"
            | "charoff"
            | "cellpadding"
            | "cellspacing"
            | "border"
            | "frame"
            | "rules"
            | "summary"
            | "start"
            | "type"
            | "value"
            | "compact"
            | "href"
            | "name"
            | "src"
            | "alt"
            | "usemap"
            | "ismap"
            | "shape"
            | "coords"
            | "nohref"
            | "datetime"
            | "cite"
            | "xmlns"
            | "bgcolor"
            | "nowrap"
            | "longdesc"
    )
}

/// The first rule the narrative breaks, as a diagnostic, or `None` when it keeps them all.
pub fn check(div: &str) -> Option<String> {
    let mut reader = Reader::from_str(div);
    reader.config_mut().check_end_names = true;
    let mut depth = 0usize;
    let mut content = false;
    let mut seen_root = false;
    loop {
        let event = match reader.read_event() {
            Ok(e) => e,
            Err(_) => return Some("txt-1: the narrative is not well-formed XHTML".into()),
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                if depth == 0 {
                    if seen_root {
                        return Some("txt-1: the narrative must be a single div element".into());
                    }
                    seen_root = true;
                    if let Some(problem) = root(e) {
                        return Some(problem);
                    }
                }
                if let Some(problem) = element(e) {
                    return Some(problem);
                }
                content |= e.local_name().as_ref() == "img";
                if !empty {
                    depth += 1;
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(t) => {
                let blank = t.trim_ascii().is_empty();
                if depth == 0 && !blank {
                    return Some("txt-1: text outside the div element".into());
                }
                content |= !blank;
            }
            Event::CData(_) => content = true,
            Event::GeneralRef(r) => {
                let known = r.is_char_ref()
                    || matches!(&*r.into_inner(), "lt" | "gt" | "amp" | "quot" | "apos");
                if !known {
                    return Some(
                        "txt-1: an undeclared entity (XHTML knows only lt, gt, amp, quot, apos \
                         and character references)"
                            .into(),
                    );
                }
                content = true;
            }
            Event::Comment(_) => {}
            Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {
                return Some(
                    "txt-1: no XML declaration, processing instruction or DOCTYPE is allowed"
                        .into(),
                );
            }
            Event::Eof => break,
        }
    }
    if !seen_root {
        return Some("txt-1: the narrative must be a div element".into());
    }
    (!content).then(|| "txt-2: the narrative has no non-whitespace content".into())
}

/// The root must be `<div xmlns="http://www.w3.org/1999/xhtml">`.
fn root(e: &BytesStart<'_>) -> Option<String> {
    if e.name().as_ref() != "div" {
        return Some("txt-1: the narrative's root element must be div".into());
    }
    let ns = e
        .attributes()
        .flatten()
        .find(|a| a.key.as_ref() == "xmlns")
        .map(|a| a.value.into_owned());
    match ns.as_deref() {
        Some(XHTML_NS) => None,
        _ => Some(format!(
            "txt-1: the div must declare the XHTML namespace (xmlns=\"{XHTML_NS}\")"
        )),
    }
}

fn element(e: &BytesStart<'_>) -> Option<String> {
    let qname = e.name();
    let name: &str = qname.as_ref();
    let local = name.strip_prefix("xhtml:").unwrap_or(name);
    if !allowed_element(local) {
        return Some(format!(
            "txt-1: the element <{local}> is not allowed in a narrative"
        ));
    }
    for attr in e.attributes() {
        let Ok(attr) = attr else {
            return Some(format!("txt-1: malformed attributes on <{local}>"));
        };
        let key: &str = attr.key.as_ref();
        if key.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("on")) {
            return Some(format!(
                "txt-1: event attributes ({key} on <{local}>) are not allowed in a narrative"
            ));
        }
        if !allowed_attribute(key) && !key.starts_with("xmlns:") {
            return Some(format!(
                "txt-1: the attribute {key} on <{local}> is not allowed in a narrative"
            ));
        }
        if matches!(key, "href" | "src" | "cite" | "longdesc" | "usemap") && script_url(&attr.value)
        {
            return Some(format!(
                "txt-1: a script URL in {key} on <{local}> is not allowed in a narrative"
            ));
        }
    }
    None
}

/// `javascript:` or `vbscript:` however written: case, whitespace, control characters and
/// character references (`&#106;avascript:`) do not hide it.
fn script_url(raw: &str) -> bool {
    if !raw.contains(':') && !raw.contains("&#") {
        return false; // no scheme, and no character reference that could spell one
    }
    let decoded = decode_char_refs(raw);
    let squeezed: String = decoded
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .flat_map(char::to_lowercase)
        .collect();
    squeezed.starts_with("javascript:") || squeezed.starts_with("vbscript:")
}

fn decode_char_refs(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find("&#") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find(';').unwrap_or(after.len());
        let num = &after[..end];
        let c = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => num.parse::<u32>().ok(),
        }
        .and_then(char::from_u32);
        match c {
            Some(c) => out.push(c),
            None => out.push_str(&rest[i..i + 2 + end]),
        }
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::check;

    const NS: &str = "xmlns=\"http://www.w3.org/1999/xhtml\"";

    #[test]
    fn safe_narratives_pass() {
        for ok in [
            format!("<div {NS}><p>Hello <b>world</b> &amp; &#160;</p></div>"),
            format!("<div {NS}><table><tr><td colspan=\"2\">x</td></tr></table></div>"),
            format!("<div {NS}><img src=\"#a\" alt=\"\"/></div>"),
            format!("<div {NS}><a href=\"http://example.org\">link</a></div>"),
        ] {
            assert_eq!(check(&ok), None, "{ok}");
        }
    }

    #[test]
    fn unsafe_narratives_fail() {
        for bad in [
            format!("<div {NS}><script>alert(1)</script>x</div>"),
            format!("<div {NS}><p onclick=\"x()\">x</p></div>"),
            format!("<div {NS}><a href=\" JavaScript:x()\">x</a></div>"),
            format!("<div {NS}><a href=\"&#106;avascript:x()\">x</a></div>"),
            format!("<div {NS}><a href=\"javascript&#58;x()\">x</a></div>"),
            format!("<div {NS}><p>unclosed</div>"),
            format!("<div {NS}>   </div>"),
            format!("<div {NS}>&nbsp;</div>"),
            "<div><p>no namespace</p></div>".to_owned(),
            format!("<p {NS}>not a div</p>"),
            format!("<div {NS}><iframe src=\"x\"/>x</div>"),
        ] {
            assert!(check(&bad).is_some(), "{bad}");
        }
    }
}
