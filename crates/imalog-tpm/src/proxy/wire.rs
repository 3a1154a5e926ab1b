//! The byte formats the proxy reads: TPM 2.0 command and response headers,
//! and the swtpm control channel.

/// Size of a TPM 2.0 command or response header: tag (2 bytes), size
/// (4 bytes, big-endian, counting the header) and command or response code
/// (4 bytes).
pub(crate) const HEADER_SIZE: usize = 10;

/// `TPM_ST_NO_SESSIONS`, the tag of a response without sessions.
const TPM_ST_NO_SESSIONS: u16 = 0x8001;

/// `TPM_RC_COMMAND_SIZE`: the command's size field is inconsistent or too
/// large. The TPM reference implementation returns it for a command larger
/// than its maximum command size, so the proxy does the same.
pub const TPM_RC_COMMAND_SIZE: u32 = 0x142;

/// `TSS2_RESMGR_RC_LAYER | TSS2_BASE_RC_IO_ERROR` (0x000b000a): the proxy
/// could not reach the TPM. TSS libraries decode the layer 11 as "resource
/// manager", which is the role the proxy plays.
pub const PROXY_RC_IO_ERROR: u32 = (11 << 16) | 10;

/// Largest response the proxy accepts from the TPM, 16 times the 4096-byte
/// buffer of swtpm 0.7.1. The bound only keeps a broken upstream from making
/// the proxy allocate without limit.
pub(crate) const RESPONSE_LIMIT: usize = 64 * 1024;

/// Returns the size a command or response header declares.
pub(crate) fn declared_size(header: &[u8; HEADER_SIZE]) -> u32 {
    u32::from_be_bytes([header[2], header[3], header[4], header[5]])
}

/// Returns the code field of a command or response header, or 0 for a
/// buffer shorter than a header.
pub(crate) fn header_code(header: &[u8]) -> u32 {
    match header.get(6..10) {
        Some(code) => u32::from_be_bytes([code[0], code[1], code[2], code[3]]),
        None => 0,
    }
}

/// Builds a response that is only a header with `response_code`.
pub(crate) fn error_response(response_code: u32) -> [u8; HEADER_SIZE] {
    let mut response = [0u8; HEADER_SIZE];
    response[0..2].copy_from_slice(&TPM_ST_NO_SESSIONS.to_be_bytes());
    response[2..6].copy_from_slice(&(HEADER_SIZE as u32).to_be_bytes());
    response[6..10].copy_from_slice(&response_code.to_be_bytes());
    response
}

/// TPM2_GetCapability(TPM_CAP_TPM_PROPERTIES) for `TPM_PT_MAX_COMMAND_SIZE`
/// (0x11e) and `TPM_PT_MAX_RESPONSE_SIZE`.
pub(crate) const GET_MAX_SIZES_COMMAND: [u8; 22] = [
    0x80, 0x01, // TPM_ST_NO_SESSIONS
    0x00, 0x00, 0x00, 0x16, // size 22
    0x00, 0x00, 0x01, 0x7a, // TPM_CC_GetCapability
    0x00, 0x00, 0x00, 0x06, // TPM_CAP_TPM_PROPERTIES
    0x00, 0x00, 0x01, 0x1e, // TPM_PT_MAX_COMMAND_SIZE
    0x00, 0x00, 0x00, 0x02, // two properties
];

const TPM_PT_MAX_COMMAND_SIZE: u32 = 0x11e;

/// Finds `TPM_PT_MAX_COMMAND_SIZE` in the response to
/// [`GET_MAX_SIZES_COMMAND`], or `None` when the response is an error or
/// lacks it.
pub(crate) fn parse_max_command_size(response: &[u8]) -> Option<u32> {
    if response.len() < HEADER_SIZE || header_code(response) != 0 {
        return None;
    }
    // moreData (1 byte), capability (4), count (4), then property-value pairs.
    let body = response.get(HEADER_SIZE..)?;
    let count = u32::from_be_bytes(body.get(5..9)?.try_into().ok()?);
    let pairs = body.get(9..)?;
    (0..count as usize).find_map(|index| {
        let pair = pairs.get(index * 8..index * 8 + 8)?;
        let property = u32::from_be_bytes(pair[0..4].try_into().ok()?);
        let value = u32::from_be_bytes(pair[4..8].try_into().ok()?);
        (property == TPM_PT_MAX_COMMAND_SIZE).then_some(value)
    })
}

/// swtpm control channel commands (`tpm_ioctl.h` of swtpm 0.7). Each is a
/// big-endian 32-bit code and a command-specific request. A response starts
/// with a big-endian 32-bit result (`ptm_res`), except for
/// CMD_GET_CAPABILITY, whose response is the 64-bit capability mask alone.
pub(crate) mod control {
    /// CMD_SET_LOCALITY: 1 byte of locality.
    pub(crate) const SET_LOCALITY: u32 = 0x05;
    /// CMD_HASH_DATA: a 32-bit length, then that many bytes.
    pub(crate) const HASH_DATA: u32 = 0x07;

    /// `TPM_SUCCESS`.
    pub(crate) const RESULT_SUCCESS: u32 = 0;
    /// `TPM_BAD_PARAMETER`.
    pub(crate) const RESULT_BAD_PARAMETER: u32 = 0x03;
    /// `TPM_BAD_ORDINAL`, which swtpm returns for commands it does not know.
    pub(crate) const RESULT_BAD_ORDINAL: u32 = 0x0a;
    /// `TPM_IOERROR`.
    pub(crate) const RESULT_IO_ERROR: u32 = 0x1f;
    /// `TPM_BAD_LOCALITY`.
    pub(crate) const RESULT_BAD_LOCALITY: u32 = 0x3d;

    /// Most bytes of CMD_HASH_DATA the proxy forwards in one command.
    pub(crate) const HASH_DATA_LIMIT: u32 = 64 * 1024;

    /// The request format of a control command, which sets how many bytes
    /// the proxy reads.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Request {
        /// A request body of this many bytes after the code.
        Fixed(usize),
        /// CMD_HASH_DATA: a 32-bit length, then the data.
        HashData,
        /// A command the proxy cannot forward: CMD_SET_STATEBLOB streams a
        /// body whose length only its header gives, and CMD_SET_DATAFD passes a
        /// file descriptor. Unknown codes are rejected too.
        Unsupported,
    }

    /// Returns the request format of a control command code.
    pub(crate) fn request(code: u32) -> Request {
        match code {
            // GET_CAPABILITY, SHUTDOWN, GET_TPMESTABLISHED, HASH_START,
            // HASH_END, CANCEL_TPM_CMD, STORE_VOLATILE, STOP, GET_CONFIG.
            0x01 | 0x03 | 0x04 | 0x06 | 0x08 | 0x09 | 0x0a | 0x0e | 0x0f => Request::Fixed(0),
            // INIT: 32-bit init flags.
            0x02 => Request::Fixed(4),
            // SET_LOCALITY, RESET_TPMESTABLISHED: 1 byte of locality.
            SET_LOCALITY | 0x0b => Request::Fixed(1),
            HASH_DATA => Request::HashData,
            // GET_STATEBLOB: state flags, type and offset, 32 bits each.
            0x0c => Request::Fixed(12),
            // SET_BUFFERSIZE: 32-bit buffer size. LOCK_STORAGE: 32-bit retries.
            0x11 | 0x13 => Request::Fixed(4),
            // GET_INFO: 64-bit flags, 32-bit offset, 32-bit padding.
            0x12 => Request::Fixed(16),
            _ => Request::Unsupported,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_has_header_only() {
        let response = error_response(TPM_RC_COMMAND_SIZE);
        assert_eq!(declared_size(&response), 10);
        assert_eq!(header_code(&response), 0x142);
        assert_eq!(&response[0..2], &[0x80, 0x01]);
    }

    #[test]
    fn max_command_size_from_capability_response() {
        let mut response = vec![0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        response.push(1); // moreData
        response.extend_from_slice(&6u32.to_be_bytes());
        response.extend_from_slice(&2u32.to_be_bytes());
        response.extend_from_slice(&0x11eu32.to_be_bytes());
        response.extend_from_slice(&4096u32.to_be_bytes());
        response.extend_from_slice(&0x11fu32.to_be_bytes());
        response.extend_from_slice(&4096u32.to_be_bytes());
        let size = response.len() as u32;
        response[2..6].copy_from_slice(&size.to_be_bytes());
        assert_eq!(parse_max_command_size(&response), Some(4096));

        assert_eq!(parse_max_command_size(&response[..25]), None);
        assert_eq!(parse_max_command_size(&error_response(0x101)), None);
    }

    #[test]
    fn get_max_sizes_command_declares_its_size() {
        let header: [u8; HEADER_SIZE] = GET_MAX_SIZES_COMMAND[..HEADER_SIZE].try_into().unwrap();
        assert_eq!(declared_size(&header) as usize, GET_MAX_SIZES_COMMAND.len());
    }
}
