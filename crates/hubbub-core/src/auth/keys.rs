//! Keys from PEM text: public keys to verify RS*/ES* tokens with (`auth.rsa_public_key`,
//! `auth.ecdsa_public_key`), private keys to sign them with (`hubbub token --key`, tests).
//!
//! jsonwebtoken reads PEM only with its `use_pem` feature, which brings an ASN.1 crate and
//! a date crate; the few structures needed here (SubjectPublicKeyInfo, PKCS#1, PKCS#8, SEC1)
//! are read by the small DER walker below instead.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// Why a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM key (expected a \"-----BEGIN ...-----\" block)")]
    NotPem,
    #[error("PEM block {0:?} is not a key this can read: {1}")]
    Unsupported(String, &'static str),
    #[error("malformed key: {0}")]
    Malformed(&'static str),
}

/// The algorithms a key is for. A key is only ever used with its own family: jsonwebtoken
/// itself would verify an HS256 signature with an RSA key's bytes as the HMAC secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    /// With the curve's algorithm: ES256 (P-256) or ES384 (P-384).
    Ec(Algorithm),
}

impl KeyFamily {
    /// Whether a token signed with `alg` may be verified with a key of this family.
    pub fn accepts(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyFamily::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyFamily::Ec(curve_alg) => alg == curve_alg,
        }
    }
}

/// A public key and the family of algorithms it verifies.
pub struct VerifyKey {
    pub family: KeyFamily,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyKey({:?})", self.family)
    }
}

/// A private key and the algorithm it signs with (RS256 for RSA, ES256/ES384 by curve).
pub struct SignKey {
    pub algorithm: Algorithm,
    pub key: EncodingKey,
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;

/// Reads DER: tag, length, content, one element at a time.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn peek(&self) -> Option<u8> {
        self.0.first().copied()
    }

    fn read(&mut self, tag: u8) -> Result<&'a [u8], KeyError> {
        let (&found, rest) = self.0.split_first().ok_or(KeyError::Malformed("truncated"))?;
        if found != tag {
            return Err(KeyError::Malformed("unexpected element"));
        }
        let (&first, mut rest) = rest.split_first().ok_or(KeyError::Malformed("truncated"))?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return Err(KeyError::Malformed("bad length"));
            }
            let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return Err(KeyError::Malformed("truncated"));
        }
        let (content, rest) = rest.split_at(len);
        self.0 = rest;
        Ok(content)
    }

    /// An AlgorithmIdentifier: the algorithm's OID and, for EC keys, the curve's.
    fn algorithm(&mut self) -> Result<(&'a [u8], Option<&'a [u8]>), KeyError> {
        let mut alg = Der(self.read(SEQUENCE)?);
        let oid = alg.read(OID)?;
        let param = if alg.peek() == Some(OID) { Some(alg.read(OID)?) } else { None };
        Ok((oid, param))
    }
}

fn curve_algorithm(curve: Option<&[u8]>) -> Result<Algorithm, KeyError> {
    match curve {
        Some(c) if c == OID_P256 => Ok(Algorithm::ES256),
        Some(c) if c == OID_P384 => Ok(Algorithm::ES384),
        _ => Err(KeyError::Unsupported("EC".into(), "only the P-256 and P-384 curves are supported")),
    }
}

/// The first PEM block of `text`: its label and its decoded bytes.
fn pem_block(text: &str) -> Result<(String, Vec<u8>), KeyError> {
    let start = text.find("-----BEGIN ").ok_or(KeyError::NotPem)?;
    let rest = &text[start + 11..];
    let label_end = rest.find("-----").ok_or(KeyError::NotPem)?;
    let label = rest[..label_end].to_owned();
    let body = &rest[label_end + 5..];
    let end = body.find(&format!("-----END {label}-----")).ok_or(KeyError::NotPem)?;
    let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| KeyError::Malformed("the PEM body is not base64"))?;
    Ok((label, der))
}

/// A public key from PEM text: `PUBLIC KEY` (SubjectPublicKeyInfo, RSA or EC P-256/P-384)
/// or `RSA PUBLIC KEY` (PKCS#1).
pub fn public_key_from_pem(text: &str) -> Result<VerifyKey, KeyError> {
    let (label, der) = pem_block(text)?;
    match label.as_str() {
        "PUBLIC KEY" => {
            let mut spki = Der(Der(&der).read(SEQUENCE)?);
            let (oid, param) = spki.algorithm()?;
            let bits = spki.read(BIT_STRING)?;
            let key = bits
                .get(1..)
                .filter(|_| bits.first() == Some(&0))
                .ok_or(KeyError::Malformed("bit string"))?;
            if oid == OID_RSA {
                Der(key).read(SEQUENCE)?;
                Ok(VerifyKey { family: KeyFamily::Rsa, key: DecodingKey::from_rsa_der(key) })
            } else if oid == OID_EC_PUBLIC_KEY {
                let alg = curve_algorithm(param)?;
                if key.first() != Some(&0x04) {
                    return Err(KeyError::Malformed("expected an uncompressed EC point"));
                }
                Ok(VerifyKey { family: KeyFamily::Ec(alg), key: DecodingKey::from_ec_der(key) })
            } else {
                Err(KeyError::Unsupported(label, "only RSA and EC keys are supported"))
            }
        }
        "RSA PUBLIC KEY" => {
            Der(&der).read(SEQUENCE)?;
            Ok(VerifyKey { family: KeyFamily::Rsa, key: DecodingKey::from_rsa_der(&der) })
        }
        "CERTIFICATE" => Err(KeyError::Unsupported(
            label,
            "give the public key itself (openssl x509 -pubkey -noout -in cert.pem)",
        )),
        _ => Err(KeyError::Unsupported(label, "expected PUBLIC KEY or RSA PUBLIC KEY")),
    }
}

/// A private key from PEM text: `PRIVATE KEY` (PKCS#8, RSA or EC), `RSA PRIVATE KEY`
/// (PKCS#1) or `EC PRIVATE KEY` (SEC1), as `openssl genpkey`/`genrsa`/`ecparam` write them.
pub fn sign_key_from_pem(text: &str) -> Result<SignKey, KeyError> {
    let (label, der) = pem_block(text)?;
    match label.as_str() {
        "PRIVATE KEY" => {
            let mut pkcs8 = Der(Der(&der).read(SEQUENCE)?);
            pkcs8.read(INTEGER)?;
            let (oid, param) = pkcs8.algorithm()?;
            let inner = pkcs8.read(OCTET_STRING)?;
            if oid == OID_RSA {
                Ok(SignKey { algorithm: Algorithm::RS256, key: EncodingKey::from_rsa_der(inner) })
            } else if oid == OID_EC_PUBLIC_KEY {
                let algorithm = curve_algorithm(param)?;
                Ok(SignKey { algorithm, key: EncodingKey::from_ec_der(&der) })
            } else {
                Err(KeyError::Unsupported(label, "only RSA and EC keys are supported"))
            }
        }
        "RSA PRIVATE KEY" => {
            Ok(SignKey { algorithm: Algorithm::RS256, key: EncodingKey::from_rsa_der(&der) })
        }
        "EC PRIVATE KEY" => {
            // SEC1 ECPrivateKey { version, key, [0] curve, [1] public key }: ring signs from
            // PKCS#8, so wrap it, naming the curve in the algorithm identifier.
            let mut sec1 = Der(Der(&der).read(SEQUENCE)?);
            sec1.read(INTEGER)?;
            sec1.read(OCTET_STRING)?;
            let curve = if sec1.peek() == Some(0xa0) { Some(Der(sec1.read(0xa0)?).read(OID)?) } else { None };
            let algorithm = curve_algorithm(curve)?;
            let curve_oid = if algorithm == Algorithm::ES256 { OID_P256 } else { OID_P384 };
            let mut alg_id = tlv(OID, OID_EC_PUBLIC_KEY);
            alg_id.extend(tlv(OID, curve_oid));
            let mut body = tlv(INTEGER, &[0]);
            body.extend(tlv(SEQUENCE, &alg_id));
            body.extend(tlv(OCTET_STRING, &der));
            Ok(SignKey { algorithm, key: EncodingKey::from_ec_der(&tlv(SEQUENCE, &body)) })
        }
        _ => Err(KeyError::Unsupported(label, "expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY")),
    }
}

/// One DER element.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().iter().copied().skip_while(|&b| b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_and_garbage() {
        assert_eq!(tlv(OCTET_STRING, &[1; 200])[..3], [OCTET_STRING, 0x81, 200]);
        assert_eq!(Der(&tlv(OCTET_STRING, &[7; 300])).read(OCTET_STRING).unwrap().len(), 300);
        assert!(Der(&[0x30, 0x85, 1, 1, 1, 1, 1]).read(SEQUENCE).is_err());
        assert!(Der(&[0x30, 0x05, 1]).read(SEQUENCE).is_err());
        assert_eq!(public_key_from_pem("hello").unwrap_err(), KeyError::NotPem);
        let garbage = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(matches!(public_key_from_pem(garbage), Err(KeyError::Malformed(_))));
        let other = "-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n";
        assert!(matches!(sign_key_from_pem(other), Err(KeyError::Unsupported(..))));
    }

    /// Whatever bytes a PEM body holds, parsing answers an error, never a panic: every
    /// prefix of a real key, and a real key with each byte flipped.
    #[test]
    fn damaged_keys_are_errors() {
        // An EC P-256 SubjectPublicKeyInfo.
        let spki = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEf83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEXH8UTNG72bfocs3+257rn0s2ldbqkLJK2KRiMohYjlrQ==";
        let der = base64::engine::general_purpose::STANDARD.decode(spki).unwrap();
        let pem = |der: &[u8], label: &str| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
        };
        assert_eq!(
            public_key_from_pem(&pem(&der, "PUBLIC KEY")).unwrap().family,
            KeyFamily::Ec(Algorithm::ES256)
        );
        for label in ["PUBLIC KEY", "RSA PUBLIC KEY", "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"] {
            for end in 0..der.len() {
                let _ = public_key_from_pem(&pem(&der[..end], label));
                let _ = sign_key_from_pem(&pem(&der[..end], label));
            }
            for i in 0..der.len() {
                for bit in [0x01, 0x80, 0xff] {
                    let mut damaged = der.clone();
                    damaged[i] ^= bit;
                    let _ = public_key_from_pem(&pem(&damaged, label));
                    let _ = sign_key_from_pem(&pem(&damaged, label));
                }
            }
        }
    }
}
