#pragma once
/* sign: Ed25519 signatures of release tarballs in minisign's formats
 * (https://jedisct1.github.io/minisign/), verified and made with libsodium,
 * so that Debian's stock `minisign` and reld's tools interoperate both ways.
 *
 *   public key   "untrusted comment: ..." \n base64("Ed" KEYID[8] PK[32])
 *   signature    "untrusted comment: ..." \n base64("ED" KEYID[8] SIG[64])
 *                "trusted comment: TEXT"  \n base64(GLOBAL[64])
 *   secret key   "untrusted comment: ..." \n base64("Ed" KDF[2] "B2" SALT[32]
 *                OPS[8] MEM[8] KEYID[8] SK[64] CHK[32])
 *
 * SIG signs the file's BLAKE2b-512 hash (minisign's default "prehashed"
 * algorithm, "ED"); GLOBAL signs SIG || TEXT, so the trusted comment cannot
 * be changed without the secret key. The legacy algorithm "Ed" (the whole
 * file signed, not its hash) is refused: verifying it needs the whole
 * tarball in memory, and minisign has not made it by default since 0.10.
 * Secret keys are read unencrypted (`minisign -G -W`) or, given the
 * password, encrypted (scrypt, minisign's default).
 *
 * The trusted comment binds a signature to one release: it is exactly
 * "reld release=NAME vsn=VSN", optionally followed by one space and free
 * text (a build id, a date). CI signs with
 *   minisign -S -s KEY -m X.tar.gz -t "reld release=NAME vsn=VSN"
 *
 * Key ids print as minisign prints them: the 8 id bytes read as a
 * little-endian number, in upper-case hex without leading zeros.
 *
 * Errors: 0 on success or a negative errno, with one line saying what and
 * where in diag (never NULL): -EINVAL malformed input, -ENOTSUP a format or algorithm
 * not supported, -ENOKEY signed by a key not trusted, -EKEYREVOKED signed by
 * a revoked key, -EBADMSG a signature that does not verify, -EIO/-ENOMEM
 * and others from the system (sign_keyring_load only). Outputs (ret_*) are
 * untouched on failure. Everything but sign_keyring_load is pure: no I/O,
 * no logging; all functions are thread-safe. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define SIGN_KEY_ID_SIZE ((size_t)8)
#define SIGN_HASH_SIZE   ((size_t)64) /* BLAKE2b-512 */
#define SIGN_KEY_ID_HEX  ((size_t)17) /* up to 16 digits and NUL */
/* minisign's own limit on the trusted comment. */
#define SIGN_COMMENT_MAX ((size_t)1024)
/* The text of a .minisig as reld takes it (four short lines: far less in
 * practice); relctl has the same bound (cli.h SIGNATURE_TEXT_MAX). */
#define SIGN_TEXT_MAX 4096

typedef struct SignPublicKey {
    uint8_t id[8];
    uint8_t pk[32];
} SignPublicKey;

typedef struct SignSecretKey {
    uint8_t id[8];
    uint8_t sk[64]; /* libsodium's: seed || public key */
} SignSecretKey;

/* A parsed .minisig. */
typedef struct SignSignature {
    uint8_t id[8];
    uint8_t sig[64];
    uint8_t global[64];
    char trusted_comment[SIGN_COMMENT_MAX + 1]; /* without "trusted comment: " */
} SignSignature;

/* The streaming BLAKE2b-512 of a file (libsodium's state, kept opaque in
 * size so callers can hold it by value). */
typedef struct SignHasher {
    _Alignas(64) unsigned char state[384];
} SignHasher;

void sign_hasher_init(SignHasher *h);
void sign_hasher_update(SignHasher *h, const void *buf, size_t len);
void sign_hasher_final(SignHasher *h, uint8_t out[SIGN_HASH_SIZE]);

/* Parses a public key file's text (len bytes, need not be NUL-terminated);
 * the untrusted comment line may be missing (a bare base64 line, as
 * minisign -P takes). what names the input in messages ("trusted.d/ci.pub"). */
int sign_public_key_parse(const char *text, size_t len, const char *what, SignPublicKey *ret, Diag *diag);
/* Parses a secret key file and checks its checksum. An encrypted key needs
 * password (NUL-terminated; NULL: none given, -ENOTSUP); a wrong password
 * fails the checksum (-EINVAL, "wrong password or damaged key file"). */
int sign_secret_key_parse(const char *text, size_t len, const char *what, const char *password, SignSecretKey *ret,
                          Diag *diag);
/* Overwrites a secret key in memory (one the compiler cannot skip). */
void sign_secret_key_wipe(SignSecretKey *sk);
/* The public half of a secret key. */
void sign_secret_key_public(const SignSecretKey *sk, SignPublicKey *ret);
/* Parses a .minisig: four lines exactly (a last newline optional). */
int sign_signature_parse(const char *text, size_t len, const char *what, SignSignature *ret, Diag *diag);

/* out: the key id as minisign prints it. */
void sign_key_id_hex(const uint8_t id[SIGN_KEY_ID_SIZE], char out[SIGN_KEY_ID_HEX]);
/* Parses 1 to 16 hex digits (either case) into an id: true when it is one. */
bool sign_key_id_parse(const char *hex, uint8_t ret[SIGN_KEY_ID_SIZE]);

/* Trusted keys and revoked key ids. Zero-initialised is empty. */
typedef struct SignKeyring {
    SignPublicKey *keys;
    size_t n_keys, cap_keys;
    uint8_t (*revoked)[8];
    size_t n_revoked, cap_revoked;
} SignKeyring;

void sign_keyring_add(SignKeyring *k, const SignPublicKey *key);
void sign_keyring_revoke(SignKeyring *k, const uint8_t id[SIGN_KEY_ID_SIZE]);
bool sign_keyring_is_revoked(const SignKeyring *k, const uint8_t id[SIGN_KEY_ID_SIZE]);
void sign_keyring_clear(SignKeyring *k);
/* Loads every regular file of trusted_dir not starting with "." as a public
 * key, and every one of revoked_dir as either a public key or lines of key
 * ids ('#' starts a comment line). A directory that does not exist is
 * empty; a file that does not parse fails the whole load (-EINVAL): a key
 * the operator meant to trust or revoke is never silently skipped. Either
 * directory may be NULL. On failure *k is left empty. */
int sign_keyring_load(SignKeyring *k, const char *trusted_dir, const char *revoked_dir, Diag *diag);

/* Verifies sig against the file whose hash is given: the key (by id) must
 * be in the keyring and not revoked, SIG must sign the hash and GLOBAL the
 * trusted comment. On success *ret_key (may be NULL) is the key's index. */
int sign_verify(const SignKeyring *k, const SignSignature *sig, const uint8_t hash[SIGN_HASH_SIZE], size_t *ret_key,
                Diag *diag);

/* "reld release=NAME vsn=VSN" (caller frees); NULL when name or vsn is not
 * valid (name_is_valid, version_is_valid). */
char *sign_comment_format(const char *name, const char *vsn);
/* Reads NAME and VSN back (caller frees both); -EINVAL with a message when
 * the comment does not follow the grammar above. */
int sign_comment_parse(const char *comment, char **ret_name, char **ret_vsn, Diag *diag);

/* 0 when the comment names exactly this release and version, else -EPERM
 * ("the signature is for release N V, not ...") or -EINVAL (grammar). */
int sign_comment_check(const char *comment, const char *name, const char *vsn, Diag *diag);

/* A .minisig's text (caller frees) for the file whose hash is given, with
 * the trusted comment (at most SIGN_COMMENT_MAX bytes, no newline). */
int sign_create(const SignSecretKey *sk, const uint8_t hash[SIGN_HASH_SIZE], const char *trusted_comment,
                char **ret_text, Diag *diag);
