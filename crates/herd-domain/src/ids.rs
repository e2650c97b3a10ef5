//! Newtype ids, so a device id cannot be passed where a tenant id is expected.
//!
//! Ids are UUIDv7 (time-ordered): their text form sorts by creation time, which is what
//! cursor pagination orders by. They are stored as text on both engines (with the `sqlx`
//! feature, each id encodes and decodes itself).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        // Stored as hyphenated text on both engines; a stored text that is not a UUID fails
        // to decode (an error, never a default).
        $crate::sqlx_text!($name, |value: &$name| value.to_string());
    };
}

id_type!(
    /// A tenant: the unit of isolation.
    TenantId
);
id_type!(
    /// A device in a tenant's registry.
    DeviceId
);
id_type!(
    /// A user who logs in with a password.
    UserId
);
id_type!(
    /// An API token or login session.
    TokenId
);
id_type!(
    /// An enrollment token.
    EnrollmentTokenId
);
id_type!(
    /// An event in the outbox.
    EventId
);
id_type!(
    /// A monitoring rule.
    RuleId
);
id_type!(
    /// An alert raised by a monitoring rule.
    AlertId
);
id_type!(
    /// A device certificate record.
    CertificateId
);
id_type!(
    /// A pending (or decided) claim on an existing device by an unproven registration.
    ClaimId
);
id_type!(
    /// A webhook subscription.
    WebhookId
);
id_type!(
    /// A remote command: sent to one device or to many (then each device has an execution).
    CommandId
);
id_type!(
    /// One delivery of one event to one webhook.
    DeliveryId
);
id_type!(
    /// A software package (an APK, a firmware image, a file) uploaded for devices to download.
    PackageId
);
id_type!(
    /// A staged rollout of one package to a target, in waves.
    RolloutId
);
