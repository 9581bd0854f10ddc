/* sign: minisign's formats over libsodium (sign.h). */
#include "sign.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sodium.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(sizeof(crypto_generichash_state) <= sizeof(((SignHasher *)0)->state), "SignHasher too small");
_Static_assert(_Alignof(crypto_generichash_state) <= 64, "SignHasher under-aligned");

#define PK_BLOB_SIZE  (2 + 8 + 32)
#define SIG_BLOB_SIZE (2 + 8 + 64)
#define SK_BLOB_SIZE  (2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32)
#define UNTRUSTED     "untrusted comment: "
#define TRUSTED       "trusted comment: "
#define COMMENT_HEAD  "reld release="

/* libsodium's init is idempotent and thread-safe; every entry point that
 * uses its primitives calls it, so callers need not know. */
static void init(void)
{
    if (sodium_init() < 0)
        abort(); /* only fails without a random source: nothing can be signed then */
}

void sign_hasher_init(SignHasher *h)
{
    init();
    (void)crypto_generichash_init((crypto_generichash_state *)h->state, NULL, 0, SIGN_HASH_SIZE);
}

void sign_hasher_update(SignHasher *h, const void *buf, size_t len)
{
    (void)crypto_generichash_update((crypto_generichash_state *)h->state, buf, len);
}

void sign_hasher_final(SignHasher *h, uint8_t out[SIGN_HASH_SIZE])
{
    (void)crypto_generichash_final((crypto_generichash_state *)h->state, out, SIGN_HASH_SIZE);
}

/* ---- lines ------------------------------------------------------------------ */

/* Up to max lines of text, without their "\n" (and a "\r" before it, as
 * minisign trims). Returns the number of lines, or -1 when there are more
 * than max or a NUL byte is in the text. A last line without "\n" counts;
 * an empty text has no lines. */
typedef struct Line {
    const char *p;
    size_t n;
} Line;

static int split_lines(const char *text, size_t len, Line *lines, int max)
{
    int n = 0;
    size_t i = 0;
    if (len == 0) /* text may be NULL then (an empty file read) */
        return 0;
    if (memchr(text, '\0', len))
        return -1;
    while (i < len) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - text) : len;
        if (n == max)
            return -1;
        lines[n].p = text + i;
        lines[n].n = end - i;
        if (lines[n].n > 0 && lines[n].p[lines[n].n - 1] == '\r')
            lines[n].n--;
        n++;
        i = nl ? end + 1 : len;
    }
    return n;
}

static bool has_prefix(const Line *l, const char *prefix)
{
    size_t n = strlen(prefix);
    return l->n >= n && memcmp(l->p, prefix, n) == 0;
}

/* Decodes one base64 line into exactly size bytes. */
static bool decode(const Line *l, uint8_t *out, size_t size)
{
    size_t got = 0;
    const char *end = NULL;
    if (sodium_base642bin(out, size, l->p, l->n, NULL, &got, &end, sodium_base64_VARIANT_ORIGINAL) != 0)
        return false;
    return got == size && end == l->p + l->n;
}

static char *encode(const uint8_t *bin, size_t size)
{
    size_t n = sodium_base64_ENCODED_LEN(size, sodium_base64_VARIANT_ORIGINAL);
    char *s = xmalloc(n);
    sodium_bin2base64(s, n, bin, size, sodium_base64_VARIANT_ORIGINAL);
    return s;
}

/* ---- keys ------------------------------------------------------------------- */

int sign_public_key_parse(const char *text, size_t len, const char *what, SignPublicKey *ret, Diag *diag)
{
    Line l[2];
    uint8_t blob[PK_BLOB_SIZE];
    int n = split_lines(text, len, l, 2);
    init();
    if (n < 1)
        return diag_error(diag, "%s: not a minisign public key (%s)", what, n == 0 ? "empty" : "more than two lines"),
               -EINVAL;
    if (n == 2 && !has_prefix(&l[0], UNTRUSTED))
        return diag_error(diag, "%s:1: a public key's first line must start with \"untrusted comment: \"", what),
               -EINVAL;
    const Line *b = &l[n - 1];
    if (!decode(b, blob, sizeof blob))
        return diag_error(diag, "%s:%d: not a minisign public key (bad base64 or length)", what, n), -EINVAL;
    if (memcmp(blob, "Ed", 2) != 0)
        return diag_error(diag, "%s:%d: unsupported public key algorithm (not Ed25519)", what, n), -ENOTSUP;
    memcpy(ret->id, blob + 2, 8);
    memcpy(ret->pk, blob + 10, 32);
    return 0;
}

/* scrypt's memory for one key: minisign asks 1 GiB; a key file asking more
 * is refused rather than allowed to exhaust the machine. */
#define KDF_MEMLIMIT_MAX (2ULL << 30)

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (size_t i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

int sign_secret_key_parse(const char *text, size_t len, const char *what, const char *password, SignSecretKey *ret,
                          Diag *diag)
{
    Line l[2];
    uint8_t blob[SK_BLOB_SIZE], chk[32];
    int n = split_lines(text, len, l, 2);
    init();
    if (n != 2 || !has_prefix(&l[0], UNTRUSTED))
        return diag_error(diag, "%s: not a minisign secret key (two lines, the first \"untrusted comment: ...\")",
                          what),
               -EINVAL;
    if (!decode(&l[1], blob, sizeof blob))
        return diag_error(diag, "%s:2: not a minisign secret key (bad base64 or length)", what), -EINVAL;
    uint8_t *alg = blob, *kdf = blob + 2, *chk_alg = blob + 4, *salt = blob + 6, *keynum = blob + 54, *id = blob + 54,
            *sk = blob + 62, *want = blob + 126;
    if (memcmp(alg, "Ed", 2) != 0 || memcmp(chk_alg, "B2", 2) != 0)
        return diag_error(diag, "%s:2: unsupported secret key algorithm (not Ed25519 with a BLAKE2b checksum)", what),
               -ENOTSUP;
    bool encrypted = kdf[0] != 0 || kdf[1] != 0;
    if (encrypted && memcmp(kdf, "Sc", 2) != 0) {
        sodium_memzero(blob, sizeof blob);
        return diag_error(diag, "%s:2: unsupported key derivation (not scrypt)", what), -ENOTSUP;
    }
    if (encrypted && !password) {
        sodium_memzero(blob, sizeof blob);
        return diag_error(diag, "%s: an encrypted secret key, and no password given", what), -ENOTSUP;
    }
    if (encrypted) {
        /* minisign's: the key id, secret key and checksum XORed with a
         * scrypt stream of the password. */
        uint64_t ops = le64(blob + 38), mem = le64(blob + 46);
        uint8_t stream[104];
        if (mem > KDF_MEMLIMIT_MAX || ops > (1ULL << 32) ||
            crypto_pwhash_scryptsalsa208sha256(stream, sizeof stream, password, strlen(password), salt,
                                               (unsigned long long)ops, (size_t)mem) != 0) {
            sodium_memzero(blob, sizeof blob);
            return diag_error(diag, "%s: cannot derive the key from the password (limits too large?)", what), -EINVAL;
        }
        for (size_t i = 0; i < sizeof stream; i++)
            keynum[i] ^= stream[i];
        sodium_memzero(stream, sizeof stream);
    }
    /* minisign's checksum: BLAKE2b-256 of algorithm, key id, secret key;
     * minisign 0.11 leaves it zero in an unencrypted key (-W), so there the
     * key's own consistency (its seed gives its public half) is the check. */
    uint8_t pk[32], sk2[64];
    (void)crypto_sign_seed_keypair(pk, sk2, sk);
    bool consistent = sodium_memcmp(pk, sk + 32, 32) == 0;
    sodium_memzero(sk2, sizeof sk2);
    if (!consistent) {
        sodium_memzero(blob, sizeof blob);
        return diag_error(diag, "%s: %s", what,
                          encrypted ? "wrong password or damaged key file"
                                    : "damaged secret key (its public half does not match)"),
               -EINVAL;
    }
    if (!encrypted && sodium_is_zero(want, 32)) {
        memcpy(ret->id, id, 8);
        memcpy(ret->sk, sk, 64);
        sodium_memzero(blob, sizeof blob);
        return 0;
    }
    crypto_generichash_state hs;
    (void)crypto_generichash_init(&hs, NULL, 0, sizeof chk);
    (void)crypto_generichash_update(&hs, alg, 2);
    (void)crypto_generichash_update(&hs, id, 8);
    (void)crypto_generichash_update(&hs, sk, 64);
    (void)crypto_generichash_final(&hs, chk, sizeof chk);
    if (sodium_memcmp(chk, want, sizeof chk) != 0) {
        sodium_memzero(blob, sizeof blob);
        return diag_error(diag, "%s: secret key checksum mismatch (%s)", what,
                          encrypted ? "wrong password or damaged key file" : "damaged key file"),
               -EINVAL;
    }
    memcpy(ret->id, id, 8);
    memcpy(ret->sk, sk, 64);
    sodium_memzero(blob, sizeof blob);
    return 0;
}

void sign_secret_key_wipe(SignSecretKey *sk)
{
    sodium_memzero(sk, sizeof *sk);
}

void sign_secret_key_public(const SignSecretKey *sk, SignPublicKey *ret)
{
    memcpy(ret->id, sk->id, 8);
    (void)crypto_sign_ed25519_sk_to_pk(ret->pk, sk->sk);
}

void sign_key_id_hex(const uint8_t id[SIGN_KEY_ID_SIZE], char out[SIGN_KEY_ID_HEX])
{
    /* As minisign prints it: the little-endian number, without leading zeros. */
    uint64_t v = 0;
    for (size_t i = 0; i < 8; i++)
        v |= (uint64_t)id[i] << (8 * i);
    snprintf(out, SIGN_KEY_ID_HEX, "%" PRIX64, v);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool sign_key_id_parse(const char *hex, uint8_t ret[SIGN_KEY_ID_SIZE])
{
    size_t n = strlen(hex);
    uint64_t v = 0;
    if (n == 0 || n > 16)
        return false;
    for (size_t i = 0; i < n; i++) {
        int d = hexval(hex[i]);
        if (d < 0)
            return false;
        v = v << 4 | (uint64_t)d;
    }
    for (size_t i = 0; i < 8; i++)
        ret[i] = (uint8_t)(v >> (8 * i));
    return true;
}

/* ---- signatures -------------------------------------------------------------- */

int sign_signature_parse(const char *text, size_t len, const char *what, SignSignature *ret, Diag *diag)
{
    Line l[4];
    uint8_t blob[SIG_BLOB_SIZE], global[64];
    int n = split_lines(text, len, l, 4);
    init();
    if (n != 4)
        return diag_error(diag, "%s: not a minisign signature (%s)", what,
                          n < 0 ? "more than four lines or a NUL byte" : "fewer than four lines: truncated?"),
               -EINVAL;
    if (!has_prefix(&l[0], UNTRUSTED))
        return diag_error(diag, "%s:1: must start with \"untrusted comment: \"", what), -EINVAL;
    if (!decode(&l[1], blob, sizeof blob))
        return diag_error(diag, "%s:2: not a signature (bad base64 or length)", what), -EINVAL;
    if (memcmp(blob, "Ed", 2) == 0)
        return diag_error(diag,
                          "%s:2: legacy signature (algorithm Ed, not prehashed): sign again with minisign 0.10 "
                          "or later",
                          what),
               -ENOTSUP;
    if (memcmp(blob, "ED", 2) != 0)
        return diag_error(diag, "%s:2: unsupported signature algorithm", what), -ENOTSUP;
    if (!has_prefix(&l[2], TRUSTED))
        return diag_error(diag, "%s:3: must start with \"trusted comment: \"", what), -EINVAL;
    size_t tn = l[2].n - strlen(TRUSTED);
    if (tn > SIGN_COMMENT_MAX)
        return diag_error(diag, "%s:3: trusted comment longer than %zu bytes", what, SIGN_COMMENT_MAX), -EINVAL;
    if (!decode(&l[3], global, sizeof global))
        return diag_error(diag, "%s:4: not a global signature (bad base64 or length)", what), -EINVAL;
    memcpy(ret->id, blob + 2, 8);
    memcpy(ret->sig, blob + 10, 64);
    memcpy(ret->global, global, 64);
    memcpy(ret->trusted_comment, l[2].p + strlen(TRUSTED), tn);
    ret->trusted_comment[tn] = '\0';
    return 0;
}

int sign_verify(const SignKeyring *k, const SignSignature *sig, const uint8_t hash[SIGN_HASH_SIZE], size_t *ret_key,
                Diag *diag)
{
    char hex[SIGN_KEY_ID_HEX];
    size_t tn = strlen(sig->trusted_comment);
    init();
    sign_key_id_hex(sig->id, hex);
    if (sign_keyring_is_revoked(k, sig->id))
        return diag_error(diag, "signed by key %s, which is revoked", hex), -EKEYREVOKED;
    size_t i = 0;
    while (i < k->n_keys && memcmp(k->keys[i].id, sig->id, 8) != 0)
        i++;
    if (i == k->n_keys)
        return diag_error(diag, "signed by key %s, which is not trusted", hex), -ENOKEY;
    if (crypto_sign_verify_detached(sig->sig, hash, SIGN_HASH_SIZE, k->keys[i].pk) != 0)
        return diag_error(diag,
                          "signature by key %s does not match the tarball (another file, or changed after "
                          "signing)",
                          hex),
               -EBADMSG;
    uint8_t *msg = xmalloc(64 + tn);
    memcpy(msg, sig->sig, 64);
    memcpy(msg + 64, sig->trusted_comment, tn);
    int r = crypto_sign_verify_detached(sig->global, msg, 64 + tn, k->keys[i].pk);
    free(msg);
    if (r != 0)
        return diag_error(diag, "trusted comment does not verify with key %s (changed after signing)", hex), -EBADMSG;
    if (ret_key)
        *ret_key = i;
    return 0;
}

char *sign_comment_format(const char *name, const char *vsn)
{
    if (!name_is_valid(name) || !version_is_valid(vsn))
        return NULL;
    return xasprintf(COMMENT_HEAD "%s vsn=%s", name, vsn);
}

int sign_comment_parse(const char *comment, char **ret_name, char **ret_vsn, Diag *diag)
{
    const char *p = comment;
    if (strncmp(p, COMMENT_HEAD, strlen(COMMENT_HEAD)) != 0)
        return diag_error(diag,
                          "trusted comment \"%.80s\" does not start with \"reld release=\" (sign with -t \"reld "
                          "release=NAME vsn=VSN\")",
                          comment),
               -EINVAL;
    p += strlen(COMMENT_HEAD);
    size_t nn = strcspn(p, " ");
    _cleanup_free_ char *name = xstrndup(p, nn);
    p += nn;
    if (strncmp(p, " vsn=", 5) != 0 || !name_is_valid(name))
        return diag_error(diag, "trusted comment \"%.80s\": expected \"reld release=NAME vsn=VSN\"", comment), -EINVAL;
    p += 5;
    size_t vn = strcspn(p, " ");
    _cleanup_free_ char *vsn = xstrndup(p, vn);
    if (!version_is_valid(vsn))
        return diag_error(diag, "trusted comment \"%.80s\": expected \"reld release=NAME vsn=VSN\"", comment), -EINVAL;
    *ret_name = TAKE_PTR(name);
    *ret_vsn = TAKE_PTR(vsn);
    return 0;
}

int sign_comment_check(const char *comment, const char *name, const char *vsn, Diag *diag)
{
    _cleanup_free_ char *n = NULL, *v = NULL;
    int r = sign_comment_parse(comment, &n, &v, diag);
    if (r < 0)
        return r;
    if (strcmp(n, name) != 0 || strcmp(v, vsn) != 0)
        return diag_error(diag, "the signature is for release %s %s, not %s %s", n, v, name, vsn), -EPERM;
    return 0;
}

int sign_create(const SignSecretKey *sk, const uint8_t hash[SIGN_HASH_SIZE], const char *trusted_comment,
                char **ret_text, Diag *diag)
{
    size_t tn = strlen(trusted_comment);
    uint8_t blob[SIG_BLOB_SIZE], global[64];
    char hex[SIGN_KEY_ID_HEX];
    init();
    if (tn > SIGN_COMMENT_MAX || strpbrk(trusted_comment, "\r\n"))
        return diag_error(diag, "trusted comment must be one line of at most %zu bytes", SIGN_COMMENT_MAX), -EINVAL;
    blob[0] = 'E'; /* prehashed: SIG signs the hash */
    blob[1] = 'D';
    memcpy(blob + 2, sk->id, 8);
    (void)crypto_sign_detached(blob + 10, NULL, hash, SIGN_HASH_SIZE, sk->sk);
    uint8_t *msg = xmalloc(64 + tn);
    memcpy(msg, blob + 10, 64);
    /* SIG || comment: bytes, no NUL. */
    memcpy(msg + 64, trusted_comment, tn); // NOLINT(bugprone-not-null-terminated-result)
    (void)crypto_sign_detached(global, NULL, msg, 64 + tn, sk->sk);
    free(msg);
    _cleanup_free_ char *b1 = encode(blob, sizeof blob);
    _cleanup_free_ char *b2 = encode(global, sizeof global);
    sign_key_id_hex(sk->id, hex);
    *ret_text =
        xasprintf(UNTRUSTED "signature from reld, key %s\n%s\n" TRUSTED "%s\n%s\n", hex, b1, trusted_comment, b2);
    return 0;
}

/* ---- keyring ---------------------------------------------------------------- */

void sign_keyring_add(SignKeyring *k, const SignPublicKey *key)
{
    GROW(k->keys, k->cap_keys, k->n_keys + 1);
    k->keys[k->n_keys++] = *key;
}

void sign_keyring_revoke(SignKeyring *k, const uint8_t id[SIGN_KEY_ID_SIZE])
{
    GROW(k->revoked, k->cap_revoked, k->n_revoked + 1);
    memcpy(k->revoked[k->n_revoked++], id, 8);
}

bool sign_keyring_is_revoked(const SignKeyring *k, const uint8_t id[SIGN_KEY_ID_SIZE])
{
    for (size_t i = 0; i < k->n_revoked; i++)
        if (memcmp(k->revoked[i], id, 8) == 0)
            return true;
    return false;
}

void sign_keyring_clear(SignKeyring *k)
{
    free(k->keys);
    free(k->revoked);
    *k = (SignKeyring){0};
}

/* Key files are small: anything larger is not one. */
#define KEY_FILE_MAX 65536

static int read_small(int dirfd, const char *name, const char *what, char **ret, size_t *ret_len, Diag *diag)
{
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        return diag_error(diag, "%s: cannot open: %s", what, strerror(e)), -e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > KEY_FILE_MAX) {
        int e = S_ISREG(st.st_mode) ? EFBIG : EINVAL;
        close(fd);
        return diag_error(diag, "%s: not a regular file of at most %d bytes", what, KEY_FILE_MAX), -e;
    }
    char *buf = xmalloc((size_t)st.st_size + 1);
    ssize_t n = read(fd, buf, (size_t)st.st_size + 1);
    int e = errno;
    close(fd);
    if (n < 0) {
        free(buf);
        return diag_error(diag, "%s: cannot read: %s", what, strerror(e)), -e;
    }
    buf[n > st.st_size ? st.st_size : n] = '\0';
    *ret = buf;
    *ret_len = (size_t)(n > st.st_size ? st.st_size : n);
    return 0;
}

/* Key ids, one a line, or a public key file. */
static int load_revoked(SignKeyring *k, const char *text, size_t len, const char *what, Diag *diag)
{
    SignPublicKey pk;
    Diag quiet = {0};
    int r = sign_public_key_parse(text, len, what, &pk, &quiet);
    diag_clear(&quiet);
    if (r == 0) {
        sign_keyring_revoke(k, pk.id);
        return 0;
    }
    int line = 0;
    for (const char *p = text; p < text + len; line++) {
        const char *nl = memchr(p, '\n', (size_t)(text + len - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(text + len - p);
        _cleanup_free_ char *s = xstrndup(p, n);
        p += n + 1;
        char *b = s + strspn(s, " \t"), *e = b + strlen(b);
        while (e > b && strchr(" \t\r", e[-1]))
            *--e = '\0';
        uint8_t id[8];
        if (*b == '\0' || *b == '#')
            continue;
        if (!sign_key_id_parse(b, id))
            return diag_error(diag, "%s:%d: not a key id (up to 16 hex digits) nor a public key", what, line + 1),
                   -EINVAL;
        sign_keyring_revoke(k, id);
    }
    return 0;
}

static int load_dir(SignKeyring *k, const char *dir, bool revoked, Diag *diag)
{
    DIR *d = opendir(dir);
    if (!d) {
        int e = errno;
        return e == ENOENT ? 0 : (diag_error(diag, "%s: cannot open: %s", dir, strerror(e)), -e);
    }
    StrVec names = {0};
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            strvec_push(&names, de->d_name);
    int r = 0;
    for (size_t i = 0; i < names.n && r == 0; i++) {
        _cleanup_free_ char *what = xasprintf("%s/%s", dir, names.v[i]);
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        r = read_small(dirfd(d), names.v[i], what, &text, &len, diag);
        if (r < 0)
            break;
        if (revoked) {
            r = load_revoked(k, text, len, what, diag);
        } else {
            SignPublicKey pk;
            r = sign_public_key_parse(text, len, what, &pk, diag);
            if (r == 0)
                sign_keyring_add(k, &pk);
        }
    }
    strvec_clear(&names);
    closedir(d);
    return r;
}

int sign_keyring_load(SignKeyring *k, const char *trusted_dir, const char *revoked_dir, Diag *diag)
{
    SignKeyring n = {0};
    int r = 0;
    if (trusted_dir)
        r = load_dir(&n, trusted_dir, false, diag);
    if (r == 0 && revoked_dir)
        r = load_dir(&n, revoked_dir, true, diag);
    if (r < 0) {
        sign_keyring_clear(&n);
        sign_keyring_clear(k);
        return r;
    }
    sign_keyring_clear(k);
    *k = n;
    return 0;
}
