//! Turns a parsed struct into its `impl outbox::Event`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, LitInt, LitStr, Member, Type};

use crate::attr::{self, Container};
use crate::errors::Errors;

/// The field marked `#[event(key)]`.
struct KeyField {
    member: Member,
    ty: Type,
}

/// Expands `#[derive(Event)]`, or returns every error found in the input.
pub(crate) fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let fields = match &input.data {
        Data::Struct(data) => Some(&data.fields),
        Data::Enum(_) | Data::Union(_) => None,
    };
    // Errors are reported in source order: the struct's attributes, its keyword, its fields.
    let container = Container::parse(&input.attrs, fields, &mut errors);
    match &input.data {
        Data::Struct(_) => {}
        Data::Enum(data) => errors.push(syn::Error::new(
            data.enum_token.span,
            "`Event` can only be derived for structs, not enums: make each event type its own \
             struct, with its own name and version",
        )),
        Data::Union(data) => {
            errors.push(syn::Error::new(data.union_token.span, "`Event` can only be derived for structs, not unions"))
        }
    }
    if fields.is_some() && !container.topic_attempted {
        errors.push(syn::Error::new(
            input.ident.span(),
            format!(
                "missing event attribute `topic`: add `#[event(topic = \"...\")]` to `{}` with \
                 the Kafka topic it is published to",
                input.ident.unraw()
            ),
        ));
    }
    let key = fields.and_then(|fields| key_field(fields, &mut errors));
    errors.finish()?;
    // No error was reported, so a topic was given and is valid; an error rather than a panic
    // all the same.
    let Some(topic) = container.topic else {
        return Err(syn::Error::new(input.ident.span(), "missing event attribute `topic`"));
    };

    let ident = &input.ident;
    let krate = container.krate.map_or_else(|| quote!(::outbox), |path| quote!(#path));
    let name = container.name.unwrap_or_else(|| LitStr::new(&ident.unraw().to_string(), ident.span()));
    let version = container.version.unwrap_or_else(|| LitInt::new("1", proc_macro2::Span::call_site()));
    let key_body = match key {
        Some(KeyField { member, ty }) => {
            // Spanned to the field's type, so that a type without `Display` is reported there.
            let to_string = quote_spanned!(ty.span()=> ::std::string::ToString::to_string(&self.#member));
            quote!(::core::option::Option::Some(#to_string))
        }
        None => quote!(::core::option::Option::None),
    };

    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    // A generic struct satisfies the trait's supertraits only for some parameters: ask for them.
    let mut where_clause = where_clause.cloned();
    if input.generics.type_params().next().is_some() {
        where_clause.get_or_insert_with(|| syn::parse_quote!(where)).predicates.push(syn::parse_quote! {
            #ident #ty_generics: #krate::__private::serde::Serialize
                + #krate::__private::schemars::JsonSchema
                + ::core::marker::Send
                + ::core::marker::Sync
        });
    }

    Ok(quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #krate::Event for #ident #ty_generics #where_clause {
                const TOPIC: &'static str = #topic;
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;

                #[inline]
                fn key(&self) -> ::core::option::Option<::std::string::String> {
                    #key_body
                }
            }
        };
    })
}

/// Finds the field marked `#[event(key)]`, reporting misplaced or repeated marks.
fn key_field(fields: &Fields, errors: &mut Errors) -> Option<KeyField> {
    let mut key: Option<(KeyField, String)> = None;
    for (index, field) in fields.iter().enumerate() {
        let Some(key_attr) = attr::parse_field(&field.attrs, errors) else {
            continue;
        };
        let Some(ident) = &field.ident else {
            errors.push(syn::Error::new_spanned(
                &key_attr,
                format!(
                    "`#[event(key)]` is not supported on tuple struct fields (here field {index}): \
                     use a struct with named fields and put `#[event(key)]` on one of them"
                ),
            ));
            continue;
        };
        if let Some((_, first)) = &key {
            errors.push(syn::Error::new_spanned(
                &key_attr,
                format!(
                    "only one field can be the Kafka key, and `{first}` already has \
                     `#[event(key)]`; remove one of them"
                ),
            ));
            continue;
        }
        let field = KeyField { member: Member::Named(ident.clone()), ty: field.ty.clone() };
        key = Some((field, ident.unraw().to_string()));
    }
    key.map(|(field, _)| field)
}
