//! `text_enum!`: a closed set of values stored and sent as lowercase text.
//!
//! Each generated enum has `as_str`, `FromStr` (an unknown text is an [`UnknownValue`] error,
//! never a default), `Display`, and — with the `sqlx` feature — `Type`/`Encode`/`Decode` for
//! both engines as TEXT, so a row with a value herd does not know fails to decode instead of
//! being read as something else.

/// A stored or received text that names no value of the enum it was parsed as.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a known {what}")]
pub struct UnknownValue {
    /// What was being parsed (`role`, `device status`, …).
    pub what: &'static str,
    /// The text that did not match.
    pub text: String,
}

/// Declares a text enum: `text_enum!(/// doc
///  Name "what" { Variant = "text", … })`.
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $name:ident $what:literal {
            // `$text` is a `tt`, not a `literal`: a `literal` fragment reaches the derives wrapped in
            // an invisible group, which utoipa's `ToSchema` does not read, so the OpenAPI enum
            // listed the Rust variant names instead of the wire texts.
            $( $(#[$vmeta:meta])* $variant:ident = $text:tt ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and wire form.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::UnknownValue;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::UnknownValue { what: $what, text: text.to_string() }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        $crate::sqlx_text!($name, |value: &$name| value.as_str());
    };
}

/// With the `sqlx` feature: stores `$name` as TEXT on both engines through its `as_str` and
/// `FromStr`. Without it: nothing.
#[cfg(feature = "sqlx")]
#[macro_export]
#[doc(hidden)]
macro_rules! sqlx_text {
    ($name:ty, |$value:ident: &$ty:ty| $text:expr) => {
        impl sqlx::Type<sqlx::Sqlite> for $name {
            fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
                <str as sqlx::Type<sqlx::Sqlite>>::type_info()
            }
            fn compatible(ty: &sqlx::sqlite::SqliteTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::Sqlite>>::compatible(ty)
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Sqlite> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut Vec<sqlx::sqlite::SqliteArgumentValue<'q>>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                let $value: &$ty = self;
                sqlx::Encode::<'q, sqlx::Sqlite>::encode($text, buf)
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                let $value: &$ty = self;
                sqlx::Encode::<'_, sqlx::Postgres>::encode_by_ref(&$text, buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Sqlite> for $name {
            fn decode(value: sqlx::sqlite::SqliteValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, sqlx::Sqlite>>::decode(value)?;
                Ok(text.parse::<$name>()?)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)?;
                Ok(text.parse::<$name>()?)
            }
        }
    };
}

#[cfg(not(feature = "sqlx"))]
#[macro_export]
#[doc(hidden)]
macro_rules! sqlx_text {
    ($($anything:tt)*) => {};
}
