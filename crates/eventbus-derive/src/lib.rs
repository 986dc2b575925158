//! Derive macros for eventbus: `#[derive(Event)]` for event types and `#[derive(AvroRecord)]`
//! for the records nested in them. Use them through `eventbus` (or `eventbus-core`), which
//! re-exports both.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use proc_macro_crate::{crate_name, FoundCrate};
use quote::quote;
use syn::{parse_macro_input, Data, DeriveInput, Fields, Ident, LitInt, LitStr};

/// Derives `Event`: type name, minor version, Avro schema (a `CloudEvent` record in the event
/// type's namespace), key and signal.
///
/// ```ignore
/// #[derive(Serialize, Deserialize, Event)]
/// #[event(type = "org.example.user.created.v1", minor_version = 0, key = "user.id")]
/// struct UserCreated { user: UserData }
/// ```
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand_event(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Derives `AvroType` for a struct used inside an event: an Avro `record` named after the struct.
#[proc_macro_derive(AvroRecord)]
pub fn derive_avro_record(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand_record(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The path under which the caller sees eventbus-core: the facade when the caller depends on it,
/// else the core crate itself.
fn core_path() -> Tokens {
    let found = crate_name("eventbus")
        .map(|found| (found, true))
        .or_else(|_| crate_name("eventbus-core").map(|found| (found, false)));
    match found {
        Ok((FoundCrate::Name(name), _)) => {
            let ident = Ident::new(&name, Span::call_site());
            quote!(::#ident)
        }
        Ok((FoundCrate::Itself, true)) => quote!(::eventbus),
        _ => quote!(::eventbus_core),
    }
}

struct FieldInfo {
    ident: Ident,
    wire_name: String,
    ty: syn::Type,
}

fn named_fields(input: &DeriveInput) -> syn::Result<Vec<FieldInfo>> {
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "events and records cannot be generic: their Avro schema needs one fixed name",
        ));
    }
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "only structs with named fields can be events or Avro records",
        ));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "only structs with named fields can be events or Avro records",
        ));
    };
    let mut out = Vec::new();
    for field in &fields.named {
        let Some(ident) = field.ident.clone() else {
            continue;
        };
        let mut wire_name = ident.to_string();
        let mut skipped = false;
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("serde")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("rename") {
                    let lit: LitStr = meta.value()?.parse()?;
                    wire_name = lit.value();
                } else if meta.path.is_ident("skip") {
                    skipped = true;
                } else if meta.input.peek(syn::Token![=]) {
                    // Other serde options (default, with, …) do not change the schema.
                    let _: syn::Expr = meta.value()?.parse()?;
                }
                Ok(())
            })?;
        }
        if !skipped {
            out.push(FieldInfo {
                ident,
                wire_name,
                ty: field.ty.clone(),
            });
        }
    }
    Ok(out)
}

fn field_schemas(core: &Tokens, fields: &[FieldInfo]) -> Tokens {
    let items = fields.iter().map(|f| {
        let name = &f.wire_name;
        let ty = &f.ty;
        quote!(#core::schema::field::<#ty>(#name, builder))
    });
    quote!(::std::vec![#(#items),*])
}

fn expand_record(input: &DeriveInput) -> syn::Result<Tokens> {
    let core = core_path();
    let fields = named_fields(input)?;
    let ident = &input.ident;
    let name = ident.to_string();
    let schemas = field_schemas(&core, &fields);
    Ok(quote! {
        impl #core::schema::AvroType for #ident {
            fn avro_schema(builder: &mut #core::schema::SchemaBuilder) -> #core::__private::serde_json::Value {
                #core::schema::record(#name, builder, |builder| #schemas)
            }
        }
    })
}

struct EventAttrs {
    event_type: LitStr,
    minor_version: u32,
    key: Option<LitStr>,
}

fn event_attrs(input: &DeriveInput) -> syn::Result<EventAttrs> {
    let mut event_type = None;
    let mut minor_version = 0u32;
    let mut key = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("type") {
                let lit: LitStr = meta.value()?.parse()?;
                if lit.value().trim().is_empty() {
                    return Err(meta.error("the event type must not be empty"));
                }
                event_type = Some(lit);
            } else if meta.path.is_ident("minor_version") {
                let lit: LitInt = meta.value()?.parse()?;
                minor_version = lit.base10_parse()?;
            } else if meta.path.is_ident("key") {
                key = Some(meta.value()?.parse()?);
            } else {
                return Err(meta.error("expected `type`, `minor_version` or `key`"));
            }
            Ok(())
        })?;
    }
    let event_type = event_type.ok_or_else(|| {
        syn::Error::new_spanned(
            &input.ident,
            "an event needs its type name: #[event(type = \"org.example.thing.happened.v1\")]",
        )
    })?;
    Ok(EventAttrs {
        event_type,
        minor_version,
        key,
    })
}

fn key_expr(core: &Tokens, key: Option<&LitStr>, fields: &[FieldInfo]) -> syn::Result<Tokens> {
    let Some(key) = key else {
        return Ok(quote!(::std::option::Option::None));
    };
    let path = key.value();
    let mut parts = path.split('.');
    let first = parts.next().unwrap_or_default();
    let Some(field) = fields
        .iter()
        .find(|f| f.wire_name == first || f.ident == first)
    else {
        return Err(syn::Error::new_spanned(
            key,
            format!("the key `{path}` does not start with a field of this event"),
        ));
    };
    let head = &field.ident;
    let rest = parts
        .map(|p| {
            syn::parse_str::<Ident>(p).map_err(|_| syn::Error::new_spanned(key, "bad key path"))
        })
        .collect::<syn::Result<Vec<_>>>()?;
    Ok(quote!(#core::EventKey::event_key(&self.#head #(.#rest)*)))
}

fn expand_event(input: &DeriveInput) -> syn::Result<Tokens> {
    let core = core_path();
    let fields = named_fields(input)?;
    let attrs = event_attrs(input)?;
    let ident = &input.ident;
    let event_type = &attrs.event_type;
    let minor = attrs.minor_version;
    let schemas = field_schemas(&core, &fields);
    let key = key_expr(&core, attrs.key.as_ref(), &fields)?;
    let key_field = match &attrs.key {
        Some(path) => quote!(::std::option::Option::Some(#path)),
        None => quote!(::std::option::Option::None),
    };
    Ok(quote! {
        impl #core::Event for #ident {
            const EVENT_TYPE: &'static str = #event_type;
            const MINOR_VERSION: u32 = #minor;
            const KEY_FIELD: ::std::option::Option<&'static str> = #key_field;

            fn schema() -> #core::Result<&'static #core::EventSchema> {
                static SCHEMA: ::std::sync::OnceLock<::std::result::Result<#core::EventSchema, ::std::string::String>> =
                    ::std::sync::OnceLock::new();
                #core::EventSchema::cached(&SCHEMA, || {
                    #core::schema::cloud_event(#event_type, |builder| #schemas)
                })
            }

            fn key(&self) -> ::std::option::Option<::std::string::String> {
                #key
            }

            fn signal() -> &'static #core::Signal<Self> {
                static SIGNAL: #core::Signal<#ident> = #core::Signal::new();
                &SIGNAL
            }
        }

        #core::__private::inventory::submit! {
            #core::signal::SignalEntry::of::<#ident>()
        }
    })
}
