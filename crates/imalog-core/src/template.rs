//! Template descriptors and field identifiers (kernel `ima_template.c`).
//!
//! A template is a name plus a format: the `|`-separated list of field ids
//! whose data make up each record's template data. Lists carry only the
//! name, so decoding resolves it here: first against the built-in
//! descriptors, then by reading the name as a format string, which is how
//! the kernel names custom templates (`ima_template_fmt=`) in its lists.

use std::fmt;
use std::sync::{Arc, OnceLock};

/// Maximum number of fields in a template (`IMA_TEMPLATE_NUM_FIELDS_MAX`).
pub const MAX_FIELDS: usize = 15;

/// Maximum length of a field id (`IMA_TEMPLATE_FIELD_ID_MAX_LEN`).
pub const MAX_FIELD_ID_LEN: usize = 16;

/// Maximum template name length accepted in a list: 15 field ids of at most
/// 16 characters and 14 separators make 254 bytes, the longest format string
/// the kernel can register.
pub const MAX_TEMPLATE_NAME_LEN: usize = 255;

/// A template field id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FieldId {
    /// `d`: 20-byte file digest, SHA-1 or MD5 (legacy).
    D,
    /// `n`: file name, at most 255 characters (legacy).
    N,
    /// `d-ng`: file digest prefixed with its algorithm name.
    DNg,
    /// `d-ngv2`: file digest prefixed with digest type and algorithm.
    DNgV2,
    /// `n-ng`: file name without length limit.
    NNg,
    /// `sig`: file signature from `security.ima`.
    Sig,
    /// `d-modsig`: digest of the file without its appended signature.
    DModsig,
    /// `modsig`: appended signature.
    Modsig,
    /// `evmsig`: EVM portable signature from `security.evm`.
    EvmSig,
    /// `buf`: measured buffer.
    Buf,
    /// `iuid`: inode owner.
    Iuid,
    /// `igid`: inode group.
    Igid,
    /// `imode`: inode mode.
    Imode,
    /// `xattrnames`: names of EVM-protected xattrs, `|`-separated.
    XattrNames,
    /// `xattrlengths`: u32 length of each xattr value.
    XattrLengths,
    /// `xattrvalues`: concatenated xattr values.
    XattrValues,
}

/// How the kernel renders a field in the ASCII list (`enum data_formats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldFormat {
    /// Lowercase hex of a bare digest (`DATA_FMT_DIGEST`).
    Digest,
    /// `<algo>:` then hex (`DATA_FMT_DIGEST_WITH_ALGO`).
    DigestWithAlgo,
    /// `<type>:<algo>:` then hex (`DATA_FMT_DIGEST_WITH_TYPE_AND_ALGO`).
    DigestWithTypeAndAlgo,
    /// The bytes up to the first NUL (`DATA_FMT_STRING`).
    String,
    /// Lowercase hex of every byte (`DATA_FMT_HEX`).
    Hex,
    /// A decimal unsigned integer (`DATA_FMT_UINT`).
    Uint,
}

impl FieldId {
    /// Every field id the kernel defines, in `supported_fields` order.
    pub const ALL: [FieldId; 16] = [
        FieldId::D,
        FieldId::N,
        FieldId::DNg,
        FieldId::NNg,
        FieldId::Sig,
        FieldId::Buf,
        FieldId::DModsig,
        FieldId::Modsig,
        FieldId::EvmSig,
        FieldId::Iuid,
        FieldId::Igid,
        FieldId::Imode,
        FieldId::XattrNames,
        FieldId::XattrLengths,
        FieldId::XattrValues,
        FieldId::DNgV2,
    ];

    /// The id as written in format strings.
    pub const fn as_str(self) -> &'static str {
        match self {
            FieldId::D => "d",
            FieldId::N => "n",
            FieldId::DNg => "d-ng",
            FieldId::DNgV2 => "d-ngv2",
            FieldId::NNg => "n-ng",
            FieldId::Sig => "sig",
            FieldId::DModsig => "d-modsig",
            FieldId::Modsig => "modsig",
            FieldId::EvmSig => "evmsig",
            FieldId::Buf => "buf",
            FieldId::Iuid => "iuid",
            FieldId::Igid => "igid",
            FieldId::Imode => "imode",
            FieldId::XattrNames => "xattrnames",
            FieldId::XattrLengths => "xattrlengths",
            FieldId::XattrValues => "xattrvalues",
        }
    }

    /// Looks up a field id.
    pub fn from_name(name: &str) -> Option<FieldId> {
        FieldId::ALL.into_iter().find(|id| id.as_str() == name)
    }

    /// How the kernel shows this field in ASCII lists.
    pub const fn format(self) -> FieldFormat {
        match self {
            FieldId::D => FieldFormat::Digest,
            FieldId::DNg | FieldId::DModsig => FieldFormat::DigestWithAlgo,
            FieldId::DNgV2 => FieldFormat::DigestWithTypeAndAlgo,
            FieldId::N | FieldId::NNg | FieldId::XattrNames => FieldFormat::String,
            FieldId::Sig
            | FieldId::Modsig
            | FieldId::EvmSig
            | FieldId::Buf
            | FieldId::XattrLengths
            | FieldId::XattrValues => FieldFormat::Hex,
            FieldId::Iuid | FieldId::Igid | FieldId::Imode => FieldFormat::Uint,
        }
    }

    /// The width of a non-empty integer field: `unsigned int` for ids,
    /// `umode_t` for the mode.
    pub const fn uint_width(self) -> Option<usize> {
        match self {
            FieldId::Iuid | FieldId::Igid => Some(4),
            FieldId::Imode => Some(2),
            _ => None,
        }
    }
}

impl fmt::Display for FieldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A template descriptor: the name lists carry, and the fields it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    name: String,
    fields: Vec<FieldId>,
    legacy: bool,
}

/// Built-in descriptors (`builtin_templates` in `ima_template.c`).
pub const BUILTIN_TEMPLATES: [(&str, &str); 8] = [
    ("ima", "d|n"),
    ("ima-ng", "d-ng|n-ng"),
    ("ima-sig", "d-ng|n-ng|sig"),
    ("ima-ngv2", "d-ngv2|n-ng"),
    ("ima-sigv2", "d-ngv2|n-ng|sig"),
    ("ima-buf", "d-ng|n-ng|buf"),
    ("ima-modsig", "d-ng|n-ng|sig|d-modsig|modsig"),
    ("evm-sig", "d-ng|n-ng|evmsig|xattrnames|xattrlengths|xattrvalues|iuid|igid|imode"),
];

/// A template name that is neither built-in nor a valid format string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// Unknown name whose parts are not all field ids.
    #[error("unknown template '{name}': not a built-in template, and '{field}' is not a field id")]
    Unknown {
        /// The name, lossily decoded.
        name: String,
        /// The first part that is not a field id.
        field: String,
    },
    /// More than 15 fields.
    #[error("template '{name}' has {count} fields; the kernel allows at most {MAX_FIELDS}")]
    TooManyFields {
        /// The name.
        name: String,
        /// Number of fields.
        count: usize,
    },
    /// Empty name or not printable ASCII.
    #[error("invalid template name {name:?}: expected a non-empty printable ASCII name")]
    InvalidName {
        /// The name, lossily decoded.
        name: String,
    },
}

fn builtin_table() -> &'static [Arc<Template>] {
    static TABLE: OnceLock<Vec<Arc<Template>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        BUILTIN_TEMPLATES
            .iter()
            .map(|(name, format)| {
                let fields = format.split('|').filter_map(FieldId::from_name).collect();
                Arc::new(Template { name: (*name).to_string(), fields, legacy: *name == "ima" })
            })
            .collect()
    })
}

impl Template {
    /// Resolves a template name as the kernel does when it restores a kexec
    /// buffer: a built-in name, else a format string of known field ids.
    pub fn lookup(name: &[u8]) -> Result<Arc<Template>, TemplateError> {
        let lossy = || String::from_utf8_lossy(name).into_owned();
        if name.is_empty() || !name.iter().all(|&b| (0x21..0x7f).contains(&b)) {
            return Err(TemplateError::InvalidName { name: lossy() });
        }
        // Checked above: printable ASCII is valid UTF-8.
        let text = std::str::from_utf8(name).map_err(|_| TemplateError::InvalidName { name: lossy() })?;
        if let Some(builtin) = builtin_table().iter().find(|t| t.name == text) {
            return Ok(Arc::clone(builtin));
        }
        Template::custom(text).map(Arc::new)
    }

    /// The `ima-ng` descriptor, the kernel's default template.
    pub fn default_template() -> Arc<Template> {
        builtin_table()
            .iter()
            .find(|t| t.name == "ima-ng")
            .cloned()
            // The table is built from BUILTIN_TEMPLATES, which lists ima-ng.
            .unwrap_or_else(|| {
                Arc::new(Template { name: "ima-ng".into(), fields: vec![FieldId::DNg, FieldId::NNg], legacy: false })
            })
    }

    /// The built-in template of that name.
    pub fn builtin(name: &str) -> Option<Arc<Template>> {
        builtin_table().iter().find(|t| t.name == name).cloned()
    }

    /// A custom template named by its format string, as the kernel shows
    /// templates set with `ima_template_fmt=`.
    pub fn custom(format: &str) -> Result<Template, TemplateError> {
        let mut fields = Vec::new();
        for part in format.split('|') {
            match FieldId::from_name(part) {
                Some(id) => fields.push(id),
                None => return Err(TemplateError::Unknown { name: format.to_string(), field: part.to_string() }),
            }
        }
        if fields.len() > MAX_FIELDS {
            return Err(TemplateError::TooManyFields { name: format.to_string(), count: fields.len() });
        }
        Ok(Template { name: format.to_string(), fields, legacy: false })
    }

    /// The name written in lists.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The field ids, in order.
    pub fn fields(&self) -> &[FieldId] {
        &self.fields
    }

    /// The format string (`d-ng|n-ng`).
    pub fn format(&self) -> String {
        self.fields.iter().map(|f| f.as_str()).collect::<Vec<_>>().join("|")
    }

    /// True for the legacy `ima` template, whose binary layout and template
    /// digest differ from every other template. A custom template with the
    /// format `d|n` is not legacy: the kernel decides by name.
    pub fn is_legacy_ima(&self) -> bool {
        self.legacy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_builtin_templates() {
        for (name, format) in BUILTIN_TEMPLATES {
            let template = Template::lookup(name.as_bytes()).unwrap();
            assert_eq!(template.name(), name);
            assert_eq!(template.format(), format);
            assert_eq!(template.is_legacy_ima(), name == "ima");
        }
    }

    #[test]
    fn lookup_custom_format_name() {
        let template = Template::lookup(b"n-ng|sig|d-ng").unwrap();
        assert_eq!(template.fields(), &[FieldId::NNg, FieldId::Sig, FieldId::DNg]);
        assert!(!Template::lookup(b"d|n").unwrap().is_legacy_ima());
    }

    #[test]
    fn lookup_rejects_unknown_and_invalid() {
        assert_eq!(
            Template::lookup(b"ima-dep-cgn"),
            Err(TemplateError::Unknown { name: "ima-dep-cgn".into(), field: "ima-dep-cgn".into() })
        );
        assert!(matches!(Template::lookup(b""), Err(TemplateError::InvalidName { .. })));
        assert!(matches!(Template::lookup(b"ima ng"), Err(TemplateError::InvalidName { .. })));
        let sixteen = vec!["n"; 16].join("|");
        assert!(matches!(Template::lookup(sixteen.as_bytes()), Err(TemplateError::TooManyFields { count: 16, .. })));
    }
}
