//! Binary rows: a marker byte, fixed-width numbers, length-prefixed text, then the bulk (a
//! payload, a state) as it is. JSON would escape every quote of the bulk, and repeat what the
//! key already says. Rows of earlier versions are JSON, which starts with `{`, and read as well.

use uuid::Uuid;

/// The first byte of a binary row.
pub(crate) const BINARY: u8 = 0xB1;

/// Whether `s` fits a length-prefixed text.
pub(crate) fn fits(s: &str) -> bool {
    u16::try_from(s.len()).is_ok()
}

/// Append `s`, its length first. Only for text that [`fits`].
pub(crate) fn put_text(row: &mut Vec<u8>, s: &str) {
    row.extend_from_slice(&(s.len() as u16).to_be_bytes());
    row.extend_from_slice(s.as_bytes());
}

/// Reads a binary row from the front (after its marker).
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl Reader<'_> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    pub(crate) fn uuid(&mut self) -> Option<Uuid> {
        Uuid::from_slice(self.take(16)?).ok()
    }

    pub(crate) fn text(&mut self) -> Option<String> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    /// Whatever is left, as text.
    pub(crate) fn rest(self) -> Option<String> {
        String::from_utf8(self.0.to_vec()).ok()
    }
}
