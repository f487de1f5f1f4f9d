//! Parsing of the `#[event(...)]` attributes on the struct and on its fields.
//!
//! Mistakes are pushed to an [`Errors`] and parsing goes on, so that one compilation reports all
//! of them; a value that is wrong is skipped, not guessed.

use proc_macro2::TokenTree;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, ExprLit, ExprUnary, Fields, Lit, LitInt, LitStr, Path, Token, UnOp};

use crate::check;
use crate::errors::Errors;

/// The keys of the struct's `#[event(...)]` attributes.
const CONTAINER_KEYS: [&str; 4] = ["topic", "name", "version", "crate"];

/// The key of a field's `#[event(...)]` attribute.
const FIELD_KEY: &str = "key";

/// The struct's `#[event(...)]` attributes.
#[derive(Default)]
pub(crate) struct Container {
    /// `topic = "..."`, when given and valid.
    pub(crate) topic: Option<LitStr>,
    /// Whether `topic` was written at all, even without a value, with a wrong one or misspelled:
    /// then an error about it is already reported, and it is not also reported missing.
    pub(crate) topic_attempted: bool,
    /// `name = "..."`, when given and valid.
    pub(crate) name: Option<LitStr>,
    /// `version = N`, when given and valid.
    pub(crate) version: Option<LitInt>,
    /// `crate = "path"`, when given and valid.
    pub(crate) krate: Option<Path>,
}

/// Which container keys were already seen, to report duplicates.
#[derive(Default)]
struct Seen {
    topic: bool,
    name: bool,
    version: bool,
    krate: bool,
}

impl Container {
    /// Parses every `#[event(...)]` attribute of the struct.
    ///
    /// `fields` are the struct's fields, to explain a misplaced `key`; `None` for enums and unions.
    pub(crate) fn parse(attrs: &[Attribute], fields: Option<&Fields>, errors: &mut Errors) -> Self {
        let mut container = Self::default();
        let mut seen = Seen::default();
        for attr in attrs.iter().filter(|attr| attr.path().is_ident("event")) {
            let result = attr.parse_nested_meta(|meta| container.parse_key(&meta, &mut seen, fields, errors));
            errors.ok(result);
        }
        container
    }

    /// Parses one `key = value` of a struct attribute.
    ///
    /// Returns `Err` only for syntax that cannot be skipped; other mistakes go to `errors`.
    fn parse_key(
        &mut self,
        meta: &ParseNestedMeta<'_>,
        seen: &mut Seen,
        fields: Option<&Fields>,
        errors: &mut Errors,
    ) -> syn::Result<()> {
        let path = &meta.path;
        let flag = if path.is_ident("topic") {
            &mut seen.topic
        } else if path.is_ident("name") {
            &mut seen.name
        } else if path.is_ident("version") {
            &mut seen.version
        } else if path.is_ident("crate") {
            &mut seen.krate
        } else {
            let (error, suggestion) = unknown_container_key(path, fields);
            errors.push(error);
            if suggestion == Some("topic") {
                self.topic_attempted = true;
            }
            return skip_value(meta);
        };
        if std::mem::replace(flag, true) {
            errors.push(syn::Error::new_spanned(
                path,
                format!("duplicate event attribute `{}`: it can be given only once", path_to_string(path)),
            ));
            return skip_value(meta);
        }
        if path.is_ident("topic") {
            self.topic_attempted = true;
        }

        let Some(value) = parse_value(meta, errors)? else {
            return Ok(());
        };
        if path.is_ident("topic") {
            self.topic = errors.ok(string_value(&value, "topic", "orders").and_then(|lit| {
                check::topic(&lit.value()).map_err(|msg| syn::Error::new(lit.span(), msg))?;
                Ok(lit)
            }));
        } else if path.is_ident("name") {
            self.name = errors.ok(string_value(&value, "name", "order.placed").and_then(|lit| {
                check::name(&lit.value()).map_err(|msg| syn::Error::new(lit.span(), msg))?;
                Ok(lit)
            }));
        } else if path.is_ident("version") {
            self.version = errors.ok(version_value(&value));
        } else {
            self.krate = errors.ok(string_value(&value, "crate", "::outbox").and_then(|lit| {
                lit.parse::<Path>().map_err(|_| {
                    syn::Error::new(
                        lit.span(),
                        format!(
                            "`crate` must be the path to the outbox crate, e.g. \
                             `crate = \"::outbox\"`; `{}` is not a path",
                            lit.value()
                        ),
                    )
                })
            }));
        }
        Ok(())
    }
}

/// The error for a key that a struct's `#[event(...)]` does not take, and the known key it is
/// probably a typo of.
fn unknown_container_key(path: &Path, fields: Option<&Fields>) -> (syn::Error, Option<&'static str>) {
    let name = path_to_string(path);
    let named_fields = "use a struct with named fields and put `#[event(key)]` on one of them";
    let (message, suggestion) = if name == FIELD_KEY {
        let message = match fields {
            Some(Fields::Unit) => format!(
                "`#[event(key)]` is not supported on a unit struct, which has no field to use as \
                 the Kafka key: {named_fields}"
            ),
            Some(Fields::Unnamed(_)) => format!(
                "`key` is a field attribute, and tuple struct fields are not supported: \
                 {named_fields}"
            ),
            _ => "`key` is a field attribute: put `#[event(key)]` on the named field that holds \
                  the Kafka key, not on the struct"
                .to_owned(),
        };
        (message, None)
    } else {
        let expected = "the struct takes `topic`, `name`, `version` and `crate`";
        match check::suggest(&name, &CONTAINER_KEYS) {
            Some(suggestion) => (
                format!("unknown event attribute `{name}`: did you mean `{suggestion}`? ({expected})"),
                Some(suggestion),
            ),
            None => (format!("unknown event attribute `{name}` ({expected})"), None),
        }
    };
    (syn::Error::new_spanned(path, message), suggestion)
}

/// Parses the `#[event(...)]` attributes of one field.
///
/// Returns the attribute that holds `key`, if any.
pub(crate) fn parse_field(attrs: &[Attribute], errors: &mut Errors) -> Option<Attribute> {
    let mut key_attr: Option<Attribute> = None;
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("event")) {
        let result = attr.parse_nested_meta(|meta| {
            let path = &meta.path;
            if !path.is_ident(FIELD_KEY) {
                errors.push(unknown_field_key(path));
                return skip_value(&meta);
            }
            if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
                errors.push(syn::Error::new_spanned(
                    path,
                    "`key` takes no value: write `#[event(key)]` on the field that holds the \
                     Kafka key",
                ));
                return skip_value(&meta);
            }
            if key_attr.is_some() {
                errors
                    .push(syn::Error::new_spanned(path, "duplicate event attribute `key`: it can be given only once"));
            } else {
                key_attr = Some(attr.clone());
            }
            Ok(())
        });
        errors.ok(result);
    }
    key_attr
}

/// The error for a key that a field's `#[event(...)]` does not take.
fn unknown_field_key(path: &Path) -> syn::Error {
    let name = path_to_string(path);
    let message = if CONTAINER_KEYS.contains(&name.as_str()) {
        format!(
            "`{name}` is a struct attribute: put `#[event({name} = ...)]` on the struct, not on \
             a field"
        )
    } else {
        let expected = "the only field attribute is `#[event(key)]`";
        match check::suggest(&name, &[FIELD_KEY]) {
            Some(suggestion) => format!(
                "unknown event attribute `{name}` on a field: did you mean `{suggestion}`? \
                 ({expected})"
            ),
            None => format!("unknown event attribute `{name}` on a field ({expected})"),
        }
    };
    syn::Error::new_spanned(path, message)
}

/// Parses the `= value` after a key; a key without a value is reported and yields `None`.
fn parse_value(meta: &ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<Option<Expr>> {
    if meta.input.peek(Token![=]) {
        return meta.value()?.parse().map(Some);
    }
    let name = path_to_string(&meta.path);
    let example = match name.as_str() {
        "topic" => "topic = \"orders\"",
        "name" => "name = \"order.placed\"",
        "version" => "version = 2",
        _ => "crate = \"::outbox\"",
    };
    errors
        .push(syn::Error::new_spanned(&meta.path, format!("event attribute `{name}` needs a value, e.g. `{example}`")));
    skip_value(meta)?;
    Ok(None)
}

/// Consumes whatever follows a key that is reported as wrong, so that parsing can go on with the
/// next key: `= expression`, `(...)` or nothing.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<TokenTree>()?;
    }
    Ok(())
}

/// The string literal of `key = "..."`.
fn string_value(value: &Expr, key: &str, example: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => Ok(lit.clone()),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("`{key}` must be a string literal, e.g. `{key} = \"{example}\"`"),
        )),
    }
}

/// The integer literal of `version = N`, as an unsuffixed `u32` literal of at least 1.
fn version_value(value: &Expr) -> syn::Result<LitInt> {
    let lit = match value {
        Expr::Lit(ExprLit { lit: Lit::Int(lit), .. }) => lit,
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => {
            let message = match lit.value().trim().parse::<u32>() {
                Ok(n) => {
                    format!("`version` must be an integer, not a string: write `version = {n}`")
                }
                Err(_) => "`version` must be an integer, not a string, e.g. `version = 2`".to_owned(),
            };
            return Err(syn::Error::new_spanned(value, message));
        }
        Expr::Unary(ExprUnary { op: UnOp::Neg(_), .. }) => {
            return Err(syn::Error::new_spanned(value, "`version` must be a positive integer: versions count from 1"));
        }
        _ => {
            return Err(syn::Error::new_spanned(value, "`version` must be an integer literal, e.g. `version = 2`"));
        }
    };
    if !matches!(lit.suffix(), "" | "u32") {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "`version` is a u32: write `version = {}` without the `{}` suffix",
                lit.base10_digits(),
                lit.suffix()
            ),
        ));
    }
    let version: u32 = lit
        .base10_parse()
        .map_err(|_| syn::Error::new(lit.span(), format!("`version` must fit in a u32 (at most {})", u32::MAX)))?;
    if version == 0 {
        return Err(syn::Error::new(lit.span(), "`version` must be at least 1: versions count from 1"));
    }
    Ok(LitInt::new(&version.to_string(), lit.span()))
}

/// `a::b` for a path, without the spaces of its token stream.
fn path_to_string(path: &Path) -> String {
    let mut out = String::new();
    if path.leading_colon.is_some() {
        out.push_str("::");
    }
    for (i, segment) in path.segments.iter().enumerate() {
        if i > 0 {
            out.push_str("::");
        }
        out.push_str(&segment.ident.to_string());
    }
    out
}
