//! A TPM reached through tss-esapi: swtpm, `/dev/tpmrm0`, or anything else
//! a TCTI string names.

use std::str::FromStr;

use imalog_core::{Bank, Digest, HashAlgorithm};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, PcrHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    CapabilityData, Data, Digest as TssDigest, DigestValues, EccPoint, EccScheme, HashScheme,
    KeyDerivationFunctionScheme, PcrSelectSize, PcrSelection, PcrSelectionList, PcrSelectionListBuilder, PcrSlot,
    Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyRsa, PublicRsaParametersBuilder, RsaExponent,
    RsaScheme, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::traits::Marshall;
use tss_esapi::tss2_esys::{ESYS_TR_PCR0, TPML_PCR_SELECTION};
use tss_esapi::utils::TpmsContext;
use tss_esapi::{Context, TctiNameConf};

use crate::proxy::{ProxyConfig, TpmProxy};
use crate::{AkAlgorithm, KeyType, Quote, Tpm, TpmError, PCR_COUNT};

/// Most bytes of qualifying data in TPM2_Quote: the size of `TPMU_HA`, the
/// largest digest (SHA-512).
const MAX_NONCE_SIZE: usize = 64;

/// A TPM reached through tss-esapi and the TCTI libraries of tpm2-tss.
///
/// The attestation key is a primary key in the endorsement hierarchy made
/// from a fixed template, so the TPM derives the same key from its
/// endorsement seed every time: creating it again is loading it. The key is
/// loaded only for the length of one quote, because TPMs shared through
/// [`crate::proxy::TpmProxy`] have few object slots and other clients may
/// flush every loaded object.
pub struct TssTpm {
    // Dropped before `bridge`, which its TCTI may connect through.
    context: Context,
    banks: Vec<Bank>,
    tcti: String,
    ak_algorithm: AkAlgorithm,
    ak: Option<AttestationKey>,
    /// A private proxy from a loopback TCP port to swtpm's Unix socket, for
    /// `swtpm:path=`, because tss-esapi 7.7 can only pass host and port to
    /// the swtpm TCTI.
    bridge: Option<TpmProxy>,
}

/// The attestation key, saved with TPM2_ContextSave while not in use.
struct AttestationKey {
    saved: TpmsContext,
    /// Marshalled `TPM2B_PUBLIC`.
    public: Vec<u8>,
}

impl TssTpm {
    /// Opens the TPM that `tcti` names and reads its allocated PCR banks.
    ///
    /// Accepted TCTI strings: `swtpm:host=HOST,port=PORT` and
    /// `swtpm:path=SOCKET` for swtpm (control channel at PORT + 1 or
    /// SOCKET.ctrl), `device:/dev/tpmrm0` for the kernel's resource manager,
    /// and the other forms tss-esapi 7.7 parses (`mssim:`, `tabrmd:`).
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let (name_conf, bridge) = resolve_tcti(tcti)?;
        let mut context = Context::new(name_conf)
            .map_err(|error| TpmError::Device(format!("cannot open the TPM through TCTI '{tcti}': {error}")))?;
        let banks = allocated_banks(&mut context)?;
        tracing::debug!(tcti, ?banks, "opened TPM");
        Ok(TssTpm { context, banks, tcti: tcti.to_string(), ak_algorithm: AkAlgorithm::default(), ak: None, bridge })
    }

    /// Returns the TCTI string the TPM was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Returns the algorithm of the attestation key that quotes use.
    pub fn ak_algorithm(&self) -> AkAlgorithm {
        self.ak_algorithm
    }

    /// Chooses the attestation key algorithm for later quotes.
    pub fn set_ak_algorithm(&mut self, algorithm: AkAlgorithm) {
        if algorithm != self.ak_algorithm {
            self.ak_algorithm = algorithm;
            self.ak = None;
        }
    }

    /// Returns the attestation key as a marshalled `TPM2B_PUBLIC`, and
    /// creates the key first if this is its first use.
    pub fn ak_public(&mut self) -> Result<Vec<u8>, TpmError> {
        if self.ak.is_none() {
            self.ak = Some(self.create_ak()?);
        }
        match &self.ak {
            Some(ak) => Ok(ak.public.clone()),
            None => Err(TpmError::Device("attestation key missing after creation".to_string())),
        }
    }

    /// Quotes `selection` with `nonce` as qualifying data, signed by the
    /// attestation key (see [`Tpm::quote`]).
    pub fn quote(&mut self, nonce: &[u8], selection: &[(Bank, Vec<u32>)]) -> Result<Quote, TpmError> {
        if nonce.len() > MAX_NONCE_SIZE {
            return Err(TpmError::NonceSize { max: MAX_NONCE_SIZE, found: nonce.len() });
        }
        let selection_list = self.selection_list(selection)?;
        let nonce = Data::try_from(nonce.to_vec()).map_err(command_error("TPM2_Quote"))?;

        let ak_public = self.ak_public()?;
        let key = self.load_ak()?;
        let quoted = self.context.execute_with_session(Some(AuthSession::Password), |context| {
            context.quote(key, nonce, SignatureScheme::Null, selection_list)
        });
        let flushed = self.context.flush_context(key.into());
        let (attest, signature) = quoted.map_err(command_error("TPM2_Quote"))?;
        flushed.map_err(command_error("TPM2_FlushContext"))?;

        Ok(Quote {
            attest: attest.marshall().map_err(command_error("marshalling TPMS_ATTEST"))?,
            signature: signature.marshall().map_err(command_error("marshalling TPMT_SIGNATURE"))?,
            ak_public,
        })
    }

    /// Creates the attestation key, saves its context and flushes it.
    fn create_ak(&mut self) -> Result<AttestationKey, TpmError> {
        let template =
            ak_template(self.ak_algorithm).map_err(command_error("building the attestation key template"))?;
        let created = self
            .context
            .execute_with_session(Some(AuthSession::Password), |context| {
                context.create_primary(Hierarchy::Endorsement, template, None, None, None, None)
            })
            .map_err(command_error("TPM2_CreatePrimary"))?;
        let key = created.key_handle;

        let saved = self.context.context_save(key.into());
        let flushed = self.context.flush_context(key.into());
        let saved = saved.map_err(command_error("TPM2_ContextSave"))?;
        flushed.map_err(command_error("TPM2_FlushContext"))?;

        let public = marshal_public(&created.out_public)?;
        tracing::debug!(tcti = %self.tcti, algorithm = ?self.ak_algorithm, "created the attestation key");
        Ok(AttestationKey { saved, public })
    }

    /// Loads the saved attestation key. A TPM reset invalidates saved
    /// contexts, and the key is then created again, which gives the same key.
    fn load_ak(&mut self) -> Result<KeyHandle, TpmError> {
        let saved = match &self.ak {
            Some(ak) => ak.saved.clone(),
            None => return Err(TpmError::Device("attestation key missing before loading".to_string())),
        };
        match self.context.context_load(saved) {
            Ok(handle) => Ok(KeyHandle::from(handle)),
            Err(error) => {
                tracing::debug!(tcti = %self.tcti, %error, "cannot load the saved attestation key; creating it again");
                let ak = self.create_ak()?;
                let saved = ak.saved.clone();
                self.ak = Some(ak);
                let handle = self.context.context_load(saved).map_err(command_error("TPM2_ContextLoad"))?;
                Ok(KeyHandle::from(handle))
            }
        }
    }

    /// Builds the `TPML_PCR_SELECTION` of a quote in the caller's bank
    /// order. (tss-esapi's own builder keeps banks in a hash map, which
    /// would order them at random.)
    fn selection_list(&self, selection: &[(Bank, Vec<u32>)]) -> Result<PcrSelectionList, TpmError> {
        let mut list = TPML_PCR_SELECTION::default();
        for (index, (bank, pcrs)) in selection.iter().enumerate() {
            self.check_bank(bank)?;
            if selection[..index].iter().any(|(other, _)| other.tpm_alg_id() == bank.tpm_alg_id()) {
                return Err(TpmError::DuplicateBank(*bank));
            }
            let mut pcrs = pcrs.clone();
            pcrs.sort_unstable();
            pcrs.dedup();
            let slots = pcrs.iter().map(|&pcr| pcr_slot(pcr)).collect::<Result<Vec<_>, _>>()?;
            let bank_selection = PcrSelection::create(hashing_algorithm(bank)?, PcrSelectSize::ThreeOctets, &slots)
                .map_err(command_error("building the PCR selection"))?;
            // Each bank appears once and `check_bank` accepted it, so there
            // are at most as many entries as allocated banks.
            let Some(entry) = list.pcrSelections.get_mut(index) else {
                return Err(TpmError::Device(format!("a PCR selection contains at most {index} banks")));
            };
            *entry = bank_selection.into();
            list.count += 1;
        }
        PcrSelectionList::try_from(list).map_err(command_error("building the PCR selection"))
    }

    fn check_bank(&self, bank: &Bank) -> Result<(), TpmError> {
        if self.banks.iter().any(|b| b.tpm_alg_id() == bank.tpm_alg_id()) {
            Ok(())
        } else {
            Err(TpmError::NoSuchBank(*bank))
        }
    }
}

impl Tpm for TssTpm {
    fn banks(&self) -> Vec<Bank> {
        self.banks.clone()
    }

    fn extend(&mut self, pcr: u32, digests: &[Digest]) -> Result<(), TpmError> {
        if pcr >= PCR_COUNT {
            return Err(TpmError::NoSuchPcr { pcr });
        }
        if digests.len() != self.banks.len() {
            return Err(TpmError::DigestCount { expected: self.banks.len(), found: digests.len() });
        }
        let mut values = DigestValues::new();
        for (bank, digest) in self.banks.iter().zip(digests) {
            if digest.len() != bank.digest_size() {
                return Err(TpmError::DigestSize { bank: *bank, expected: bank.digest_size(), found: digest.len() });
            }
            let value = TssDigest::try_from(digest.as_bytes()).map_err(command_error("TPM2_PCR_Extend"))?;
            values.set(hashing_algorithm(bank)?, value);
        }
        let handle = PcrHandle::try_from(ESYS_TR_PCR0 + pcr).map_err(command_error("TPM2_PCR_Extend"))?;
        self.context
            .execute_with_session(Some(AuthSession::Password), |context| context.pcr_extend(handle, values))
            .map_err(command_error("TPM2_PCR_Extend"))
    }

    fn read(&mut self, bank: &Bank, pcr: u32) -> Result<Digest, TpmError> {
        if pcr >= PCR_COUNT {
            return Err(TpmError::NoSuchPcr { pcr });
        }
        self.check_bank(bank)?;
        let selection = PcrSelectionListBuilder::new()
            .with_selection(hashing_algorithm(bank)?, &[pcr_slot(pcr)?])
            .build()
            .map_err(command_error("TPM2_PCR_Read"))?;
        let (_, _, values) = self
            .context
            .execute_without_session(|context| context.pcr_read(selection))
            .map_err(command_error("TPM2_PCR_Read"))?;
        let value = values.value().first().ok_or(TpmError::NoSuchBank(*bank))?;
        Digest::from_slice(value.value()).ok_or_else(|| {
            TpmError::Device(format!("TPM2_PCR_Read returned a {}-byte value for bank {bank}", value.value().len()))
        })
    }

    fn quote(&mut self, nonce: &[u8], selection: &[(Bank, Vec<u32>)]) -> Result<Quote, TpmError> {
        TssTpm::quote(self, nonce, selection)
    }
}

impl std::fmt::Debug for TssTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TssTpm")
            .field("tcti", &self.tcti)
            .field("banks", &self.banks)
            .field("ak_algorithm", &self.ak_algorithm)
            .field("bridge", &self.bridge)
            .finish_non_exhaustive()
    }
}

fn command_error(command: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |error| TpmError::Command { command, message: error.to_string() }
}

/// Turns a TCTI string into tss-esapi's configuration, starting a bridge
/// proxy for `swtpm:path=`.
fn resolve_tcti(tcti: &str) -> Result<(TctiNameConf, Option<TpmProxy>), TpmError> {
    let invalid = |reason: String| TpmError::InvalidTcti { tcti: tcti.to_string(), reason };

    let (name, options) = tcti.split_once(':').unwrap_or((tcti, ""));
    if name == "swtpm" || name == "mssim" {
        // tss-esapi ignores keys it does not know, so a typo would silently
        // connect to the default port 2321.
        let mut path = None;
        for option in options.split(',').filter(|option| !option.is_empty()) {
            match option.split_once('=') {
                Some(("host" | "port", _)) => {}
                Some(("path", value)) if name == "swtpm" && !value.is_empty() => path = Some(value),
                _ => return Err(invalid(format!("unknown option '{option}'; expected host=, port= or path="))),
            }
        }
        if let Some(path) = path {
            if options.split(',').count() > 1 {
                return Err(invalid("path= excludes host= and port=".to_string()));
            }
            let bridge = TpmProxy::start(ProxyConfig::swtpm_unix(path))
                .map_err(|error| TpmError::Device(format!("cannot reach swtpm at {path}: {error}")))?;
            let Some((server, _)) = bridge.tcp_addresses() else {
                return Err(TpmError::Device("the bridge proxy has no TCP listener".to_string()));
            };
            let bridged = format!("swtpm:host={},port={}", server.ip(), server.port());
            let name_conf = TctiNameConf::from_str(&bridged).map_err(|error| invalid(error.to_string()))?;
            return Ok((name_conf, Some(bridge)));
        }
    }
    let name_conf = TctiNameConf::from_str(tcti).map_err(|error| invalid(error.to_string()))?;
    Ok((name_conf, None))
}

/// Reads the banks that have PCRs allocated, in the order
/// TPM2_GetCapability(TPM_CAP_PCRS) lists them.
fn allocated_banks(context: &mut Context) -> Result<Vec<Bank>, TpmError> {
    let (data, _) = context
        .execute_without_session(|context| context.get_capability(CapabilityType::AssignedPcr, 0, 1))
        .map_err(command_error("TPM2_GetCapability(TPM_CAP_PCRS)"))?;
    let CapabilityData::AssignedPcr(selections) = data else {
        return Err(TpmError::Device("TPM2_GetCapability(TPM_CAP_PCRS) returned another capability".to_string()));
    };
    let mut banks = Vec::new();
    for selection in selections.get_selections() {
        if selection.is_empty() {
            continue;
        }
        let id: u16 = selection.hashing_algorithm().into();
        let algorithm = HashAlgorithm::from_tpm_alg_id(id)
            .ok_or_else(|| TpmError::Device(format!("the TPM allocates a bank of unknown hash algorithm {id:#06x}")))?;
        banks.push(Bank::new(algorithm));
    }
    Ok(banks)
}

fn hashing_algorithm(bank: &Bank) -> Result<HashingAlgorithm, TpmError> {
    HashingAlgorithm::try_from(bank.tpm_alg_id()).map_err(|_| TpmError::NoSuchBank(*bank))
}

fn pcr_slot(pcr: u32) -> Result<PcrSlot, TpmError> {
    if pcr >= PCR_COUNT {
        return Err(TpmError::NoSuchPcr { pcr });
    }
    PcrSlot::try_from(1u32 << pcr).map_err(|_| TpmError::NoSuchPcr { pcr })
}

/// Builds the template of a restricted signing key with no authorization
/// policy and an empty password, with the name algorithm, scheme and hash
/// of `algorithm`.
fn ak_template(algorithm: AkAlgorithm) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .build()?;
    let name_algorithm = tss_hash(algorithm.name_algorithm());
    let builder = PublicBuilder::new().with_name_hashing_algorithm(name_algorithm).with_object_attributes(attributes);
    let signing = algorithm.signing_scheme();
    let scheme_hash = HashScheme::new(tss_hash(signing.hash));

    if algorithm.key_type().is_rsa() {
        let scheme = match signing.scheme {
            crate::SignatureScheme::Rsapss => RsaScheme::RsaPss(scheme_hash),
            _ => RsaScheme::RsaSsa(scheme_hash),
        };
        let key_bits = if algorithm.key_type() == KeyType::Rsa3072 { RsaKeyBits::Rsa3072 } else { RsaKeyBits::Rsa2048 };
        let parameters = PublicRsaParametersBuilder::new()
            .with_symmetric(SymmetricDefinitionObject::Null)
            .with_scheme(scheme)
            .with_key_bits(key_bits)
            .with_exponent(RsaExponent::default())
            .with_is_signing_key(true)
            .with_restricted(true)
            .build()?;
        builder
            .with_public_algorithm(PublicAlgorithm::Rsa)
            .with_rsa_parameters(parameters)
            .with_rsa_unique_identifier(PublicKeyRsa::default())
            .build()
    } else {
        let curve = if algorithm.key_type() == KeyType::EccP384 { EccCurve::NistP384 } else { EccCurve::NistP256 };
        let parameters = PublicEccParametersBuilder::new()
            .with_symmetric(SymmetricDefinitionObject::Null)
            .with_ecc_scheme(EccScheme::EcDsa(scheme_hash))
            .with_curve(curve)
            .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
            .with_is_signing_key(true)
            .with_restricted(true)
            .build()?;
        builder
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_ecc_parameters(parameters)
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
    }
}

/// Maps a hash that attestation keys use to its tss-esapi name.
fn tss_hash(hash: HashAlgorithm) -> HashingAlgorithm {
    match hash {
        HashAlgorithm::Sha384 => HashingAlgorithm::Sha384,
        HashAlgorithm::Sha512 => HashingAlgorithm::Sha512,
        _ => HashingAlgorithm::Sha256,
    }
}

/// Marshals a public area as `TPM2B_PUBLIC`.
fn marshal_public(public: &Public) -> Result<Vec<u8>, TpmError> {
    let body = public.marshall().map_err(command_error("marshalling TPMT_PUBLIC"))?;
    let size = u16::try_from(body.len())
        .map_err(|_| TpmError::Device(format!("TPMT_PUBLIC of {} bytes does not fit a TPM2B", body.len())))?;
    let mut bytes = Vec::with_capacity(2 + body.len());
    bytes.extend_from_slice(&size.to_be_bytes());
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_tcti_rejects_unknown_swtpm_options() {
        let error = resolve_tcti("swtpm:host=127.0.0.1,prot=2321").unwrap_err();
        assert!(matches!(error, TpmError::InvalidTcti { .. }), "{error}");
        let error = resolve_tcti("swtpm:path=/x,port=1").unwrap_err();
        assert!(matches!(error, TpmError::InvalidTcti { .. }), "{error}");
    }

    #[test]
    fn resolve_tcti_accepts_device_and_host_port() {
        let (conf, bridge) = resolve_tcti("device:/dev/tpmrm0").unwrap();
        assert!(matches!(conf, TctiNameConf::Device(_)));
        assert!(bridge.is_none());
        let (conf, _) = resolve_tcti("swtpm:host=127.0.0.1,port=2321").unwrap();
        assert!(matches!(conf, TctiNameConf::Swtpm(_)));
    }

    #[test]
    fn ak_templates_build() {
        for algorithm in AkAlgorithm::ALL {
            assert!(ak_template(algorithm).is_ok(), "{algorithm}");
        }
    }
}
