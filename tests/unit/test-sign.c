/* sign: keys and signatures made at test time by the real minisign (two
 * unencrypted key pairs in a temporary directory), and every way a
 * signature can be wrong. Needs minisign on PATH (scripts/install-deps). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sign.h"

/* Setup runs before Check does (where ck_assert cannot): a failure there
 * is reported and exits. */
#define NEED(x)                                                                                                        \
    do {                                                                                                               \
        if (!(x)) {                                                                                                    \
            fprintf(stderr, "test-sign: setup failed: %s\n", #x);                                                      \
            exit(EXIT_FAILURE);                                                                                        \
        }                                                                                                              \
    } while (0)

static char dir[] = "/tmp/reld-test-sign-XXXXXX";

static char *path(const char *name)
{
    return xasprintf("%s/%s", dir, name);
}

static char *slurp(const char *name, size_t *ret_len)
{
    _cleanup_free_ char *p = path(name);
    FILE *f = fopen(p, "rb");
    NEED(f);
    char *buf = xmalloc(1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    if (ret_len)
        *ret_len = n;
    return buf;
}

static void spit(const char *name, const char *text, size_t len)
{
    _cleanup_free_ char *p = path(name);
    FILE *f = fopen(p, "wb");
    NEED(f);
    NEED(fwrite(text, 1, len, f) == len);
    NEED(fclose(f) == 0);
}

static int run(const char *fmt, ...) UTIL_PRINTF(1, 2);
static int run(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    _cleanup_free_ char *cmd = xvasprintf(fmt, ap);
    va_end(ap);
    _cleanup_free_ char *full = xasprintf("cd %s && (%s) </dev/null >/dev/null 2>&1", dir, cmd);
    int st = system(full);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void hash_file(const char *name, uint8_t out[SIGN_HASH_SIZE])
{
    size_t len;
    _cleanup_free_ char *buf = slurp(name, &len);
    SignHasher h;
    sign_hasher_init(&h);
    /* In uneven pieces, as a reader of a pipe would see them. */
    for (size_t i = 0; i < len;) {
        size_t n = len - i < 777 ? len - i : 777;
        sign_hasher_update(&h, buf + i, n);
        i += n;
    }
    sign_hasher_final(&h, out);
}

static SignPublicKey load_pub(const char *name)
{
    size_t len;
    _cleanup_free_ char *t = slurp(name, &len);
    SignPublicKey k;
    Diag d = {0};
    ck_assert_int_eq(sign_public_key_parse(t, len, name, &k, &d), 0);
    diag_clear(&d);
    return k;
}

static SignSecretKey load_sec(const char *name)
{
    size_t len;
    _cleanup_free_ char *t = slurp(name, &len);
    SignSecretKey k;
    Diag d = {0};
    int r = sign_secret_key_parse(t, len, name, NULL, &k, &d);
    ck_assert_msg(r == 0, "%s", d.errors.n ? d.errors.v[0] : "?");
    diag_clear(&d);
    return k;
}

/* Parses the signature file name and verifies it for file against a
 * keyring of the named public keys; returns the result and, in msg, the
 * one error line. */
static int verify(const char *sig_name, const char *file, const char *const *keys, const char *revoked_id, char **msg,
                  SignSignature *ret_sig)
{
    size_t len;
    _cleanup_free_ char *t = slurp(sig_name, &len);
    SignSignature sig;
    SignKeyring k = {0};
    Diag d = {0};
    uint8_t hash[SIGN_HASH_SIZE];
    int r = sign_signature_parse(t, len, sig_name, &sig, &d);
    if (r == 0) {
        for (size_t i = 0; keys && keys[i]; i++) {
            SignPublicKey pk = load_pub(keys[i]);
            sign_keyring_add(&k, &pk);
        }
        if (revoked_id) {
            uint8_t id[8];
            ck_assert(sign_key_id_parse(revoked_id, id));
            sign_keyring_revoke(&k, id);
        }
        hash_file(file, hash);
        r = sign_verify(&k, &sig, hash, NULL, &d);
    }
    ck_assert_uint_eq(d.errors.n, r == 0 ? 0 : 1);
    if (msg)
        *msg = xstrdup(r == 0 ? "" : d.errors.v[0]);
    if (ret_sig && r == 0)
        *ret_sig = sig;
    sign_keyring_clear(&k);
    diag_clear(&d);
    return r;
}

static const char *const key_a[] = {"a.pub", NULL};
static const char *const key_b[] = {"b.pub", NULL};
static const char *const key_ab[] = {"b.pub", "a.pub", NULL};

/* The four lines of a file, to damage one. */
static char *replace_line(const char *text, int which, const char *with)
{
    char *out = xstrdup("");
    const char *p = text;
    for (int i = 0; *p; i++) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        char *next = i == which ? xasprintf("%s%s\n", out, with) : xasprintf("%s%.*s\n", out, (int)n, p);
        free(out);
        out = next;
        p += n + (nl ? 1 : 0);
    }
    return out;
}

static char *line_of(const char *text, int which)
{
    const char *p = text;
    for (int i = 0; i < which; i++)
        p = strchr(p, '\n') + 1;
    return xstrndup(p, strcspn(p, "\n"));
}

/* For the calls whose message a test does not read. */
static Diag scratch;

static char *a_id; /* key a's id as minisign prints it (up to 16 digits) */

static void setup_once(void)
{
    NEED(mkdtemp(dir));
    NEED(0 == run("minisign -G -W -p a.pub -s a.sec && minisign -G -W -p b.pub -s b.sec"));
    /* A "tarball" of a few blocks, and another file. */
    char *data = xmalloc(100000);
    for (size_t i = 0; i < 100000; i++)
        data[i] = (char)(i * 7 + i / 300);
    spit("rel.tar.gz", data, 100000);
    data[5000] ^= 1;
    spit("other.tar.gz", data, 100000);
    free(data);
    NEED(0 == run("minisign -S -s a.sec -m rel.tar.gz -t 'reld release=shop vsn=1.0' -x good.minisig"));
    NEED(0 == run("minisign -S -s a.sec -m rel.tar.gz -x default.minisig"));
    NEED(0 == run("minisign -S -l -s a.sec -m rel.tar.gz -x legacy.minisig"));
    NEED(0 == run("minisign -S -s a.sec -m rel.tar.gz -t 'reld release=shop vsn=2.0' -x v2.minisig"));
    NEED(0 == run("minisign -S -s b.sec -m rel.tar.gz -t 'reld release=shop vsn=1.0' -x byb.minisig"));
    _cleanup_free_ char *pub = slurp("a.pub", NULL);
    const char *id = strstr(pub, "public key ");
    NEED(id);
    a_id = xstrndup(id + strlen("public key "), strcspn(id + strlen("public key "), "\n"));
}

/* ---- keys ------------------------------------------------------------------ */

START_TEST(test_public_key_id_as_minisign_prints_it)
{
    SignPublicKey k = load_pub("a.pub");
    char hex[SIGN_KEY_ID_HEX];
    sign_key_id_hex(k.id, hex);
    ck_assert_str_eq(hex, a_id);
    uint8_t id[8];
    ck_assert(sign_key_id_parse(a_id, id));
    ck_assert_mem_eq(id, k.id, 8);
    ck_assert(!sign_key_id_parse("0123456789ABCDEG", id));
    ck_assert(!sign_key_id_parse("", id));
    ck_assert(!sign_key_id_parse("0123456789ABCDEF0", id));
    /* minisign drops leading zeros; so do we, and both forms parse. */
    static const uint8_t small[8] = {0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01};
    sign_key_id_hex(small, hex);
    ck_assert_str_eq(hex, "123456789ABCDEF");
    ck_assert(sign_key_id_parse("123456789abcdef", id));
    ck_assert_mem_eq(id, small, 8);
    ck_assert(sign_key_id_parse("0123456789ABCDEF", id));
    ck_assert_mem_eq(id, small, 8);
}
END_TEST

START_TEST(test_public_key_bare_line)
{
    _cleanup_free_ char *t = slurp("a.pub", NULL);
    _cleanup_free_ char *b64 = line_of(t, 1);
    SignPublicKey k, want = load_pub("a.pub");
    ck_assert_int_eq(sign_public_key_parse(b64, strlen(b64), "x", &k, &scratch), 0);
    ck_assert_mem_eq(&k, &want, sizeof k);
}
END_TEST

START_TEST(test_public_key_garbage)
{
    static const char *const bad[] = {
        "",
        "untrusted comment: x\nRWT+BR4UGwGLJkpC2F3ycFSBMHrQrxvsQvpNPXnAPiXkQlSan2wQcwh\n", /* short */
        "untrusted comment: x\nnot base64 at all!\n",
        "comment: x\nRWT+BR4UGwGLJkpC2F3ycFSBMHrQrxvsQvpNPXnAPiXkQlSan2wQcwhI\n",
        "a\nb\nc\n",
        "untrusted comment: x\nRWT+BR4UGwGLJkpC2F3ycFSBMHrQrxvsQvpNPXnAPiXkQlSan2wQcwhIAAAA\n", /* long */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        SignPublicKey k;
        memset(&k, 0x5a, sizeof k);
        Diag d = {0};
        ck_assert_int_eq(sign_public_key_parse(bad[i], strlen(bad[i]), "k.pub", &k, &d), -EINVAL);
        ck_assert_uint_eq(d.errors.n, 1);
        ck_assert_msg(strncmp(d.errors.v[0], "k.pub", 5) == 0, "%s", d.errors.v[0]);
        ck_assert_uint_eq(k.id[0], 0x5a); /* untouched */
        diag_clear(&d);
    }
    /* A signature is not a key, and the other way round. */
    size_t len;
    _cleanup_free_ char *sig = slurp("good.minisig", &len);
    SignPublicKey k;
    ck_assert_int_eq(sign_public_key_parse(sig, len, "s", &k, &scratch), -EINVAL);
    _cleanup_free_ char *pub = slurp("a.pub", &len);
    SignSignature s;
    ck_assert_int_eq(sign_signature_parse(pub, len, "p", &s, &scratch), -EINVAL);
}
END_TEST

START_TEST(test_secret_key_public_half)
{
    SignSecretKey sk = load_sec("a.sec");
    SignPublicKey pk, want = load_pub("a.pub");
    sign_secret_key_public(&sk, &pk);
    ck_assert_mem_eq(&pk, &want, sizeof pk);
}
END_TEST

START_TEST(test_secret_key_damaged_or_encrypted)
{
    size_t len;
    _cleanup_free_ char *t = slurp("a.sec", &len);
    _cleanup_free_ char *b64 = line_of(t, 1);
    uint8_t blob[158];
    FILE *p;
    /* Decode, damage, encode with the system's base64 (not ours). */
    _cleanup_free_ char *cmd = xasprintf("echo '%s' | base64 -d", b64);
    p = popen(cmd, "r");
    ck_assert_uint_eq(fread(blob, 1, sizeof blob, p), sizeof blob);
    pclose(p);
    struct {
        size_t at;
        uint8_t x;
        int want;
    } cases[] = {{70, 1, -EINVAL} /* the seed */, {2, 'S', -ENOTSUP} /* kdf "S?" */, {0, 1, -ENOTSUP} /* alg */};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint8_t b[158];
        memcpy(b, blob, sizeof b);
        b[cases[i].at] ^= cases[i].x;
        spit("bad.bin", (char *)b, sizeof b);
        ck_assert_int_eq(run("printf 'untrusted comment: x\\n' > bad.sec && base64 -w0 bad.bin >> bad.sec"), 0);
        size_t n;
        _cleanup_free_ char *bt = slurp("bad.sec", &n);
        SignSecretKey sk;
        Diag d = {0};
        ck_assert_int_eq(sign_secret_key_parse(bt, n, "bad.sec", NULL, &sk, &d), cases[i].want);
        ck_assert_uint_eq(d.errors.n, 1);
        diag_clear(&d);
    }
    /* A non-zero checksum must match. */
    blob[140] ^= 1;
    spit("bad.bin", (char *)blob, sizeof blob);
    ck_assert_int_eq(run("printf 'untrusted comment: x\\n' > bad.sec && base64 -w0 bad.bin >> bad.sec"), 0);
    size_t n;
    _cleanup_free_ char *bt = slurp("bad.sec", &n);
    SignSecretKey sk;
    Diag d = {0};
    ck_assert_int_eq(sign_secret_key_parse(bt, n, "bad.sec", NULL, &sk, &d), -EINVAL);
    ck_assert_str_eq(d.errors.v[0], "bad.sec: secret key checksum mismatch (damaged key file)");
    diag_clear(&d);
    /* A public key is not a secret key. */
    _cleanup_free_ char *pub = slurp("a.pub", &n);
    ck_assert_int_eq(sign_secret_key_parse(pub, n, "a.pub", NULL, &sk, &scratch), -EINVAL);
}
END_TEST

START_TEST(test_secret_key_encrypted)
{
    /* minisign's default: scrypt over the password (read from standard
     * input when it is not a terminal). */
    ck_assert_int_eq(run("printf 'pass word\\npass word\\n' | minisign -G -p e.pub -s e.sec"), 0);
    size_t len;
    _cleanup_free_ char *t = slurp("e.sec", &len);
    SignSecretKey sk;
    Diag d = {0};
    ck_assert_int_eq(sign_secret_key_parse(t, len, "e.sec", NULL, &sk, &d), -ENOTSUP);
    ck_assert_str_eq(d.errors.v[0], "e.sec: an encrypted secret key, and no password given");
    diag_clear(&d);
    ck_assert_int_eq(sign_secret_key_parse(t, len, "e.sec", "pass wore", &sk, &d), -EINVAL);
    ck_assert_msg(strstr(d.errors.v[0], "wrong password"), "%s", d.errors.v[0]);
    diag_clear(&d);
    ck_assert_int_eq(sign_secret_key_parse(t, len, "e.sec", "pass word", &sk, &d), 0);
    SignPublicKey pk, want = load_pub("e.pub");
    sign_secret_key_public(&sk, &pk);
    ck_assert_mem_eq(&pk, &want, sizeof pk);
    /* And it signs what minisign verifies. */
    uint8_t hash[SIGN_HASH_SIZE];
    hash_file("rel.tar.gz", hash);
    _cleanup_free_ char *text = NULL;
    ck_assert_int_eq(sign_create(&sk, hash, "reld release=shop vsn=1.0", &text, &d), 0);
    spit("enc.minisig", text, strlen(text));
    ck_assert_int_eq(run("minisign -V -p e.pub -m rel.tar.gz -x enc.minisig"), 0);
    sign_secret_key_wipe(&sk);
}
END_TEST

/* ---- verification ---------------------------------------------------------- */

START_TEST(test_verify_minisign_signature)
{
    SignSignature sig;
    _cleanup_free_ char *msg = NULL;
    ck_assert_int_eq(verify("good.minisig", "rel.tar.gz", key_a, NULL, &msg, &sig), 0);
    ck_assert_str_eq(sig.trusted_comment, "reld release=shop vsn=1.0");
    ck_assert_int_eq(sign_comment_check(sig.trusted_comment, "shop", "1.0", &scratch), 0);
}
END_TEST

START_TEST(test_verify_rotation_two_keys)
{
    _cleanup_free_ char *m1 = NULL, *m2 = NULL;
    ck_assert_int_eq(verify("good.minisig", "rel.tar.gz", key_ab, NULL, &m1, NULL), 0);
    ck_assert_int_eq(verify("byb.minisig", "rel.tar.gz", key_ab, NULL, &m2, NULL), 0);
}
END_TEST

START_TEST(test_verify_wrong_key)
{
    _cleanup_free_ char *msg = NULL;
    ck_assert_int_eq(verify("good.minisig", "rel.tar.gz", key_b, NULL, &msg, NULL), -ENOKEY);
    _cleanup_free_ char *want = xasprintf("signed by key %s, which is not trusted", a_id);
    ck_assert_str_eq(msg, want);
}
END_TEST

START_TEST(test_verify_no_keys)
{
    _cleanup_free_ char *msg = NULL;
    ck_assert_int_eq(verify("good.minisig", "rel.tar.gz", NULL, NULL, &msg, NULL), -ENOKEY);
}
END_TEST

START_TEST(test_verify_revoked_key)
{
    _cleanup_free_ char *msg = NULL;
    ck_assert_int_eq(verify("good.minisig", "rel.tar.gz", key_ab, a_id, &msg, NULL), -EKEYREVOKED);
    _cleanup_free_ char *want = xasprintf("signed by key %s, which is revoked", a_id);
    ck_assert_str_eq(msg, want);
    /* The other key still works. */
    _cleanup_free_ char *m2 = NULL;
    ck_assert_int_eq(verify("byb.minisig", "rel.tar.gz", key_ab, a_id, &m2, NULL), 0);
}
END_TEST

START_TEST(test_verify_another_file)
{
    _cleanup_free_ char *msg = NULL;
    ck_assert_int_eq(verify("good.minisig", "other.tar.gz", key_a, NULL, &msg, NULL), -EBADMSG);
    ck_assert_msg(strstr(msg, "does not match the tarball"), "%s", msg);
}
END_TEST

START_TEST(test_verify_tarball_changed_after_signing)
{
    size_t len;
    _cleanup_free_ char *t = slurp("rel.tar.gz", &len);
    spit("changed.tar.gz", t, len);
    ck_assert_int_eq(run("printf x >> changed.tar.gz"), 0);
    _cleanup_free_ char *m1 = NULL, *m2 = NULL;
    ck_assert_int_eq(verify("good.minisig", "changed.tar.gz", key_a, NULL, &m1, NULL), -EBADMSG);
    spit("changed.tar.gz", t, len - 1); /* truncated */
    ck_assert_int_eq(verify("good.minisig", "changed.tar.gz", key_a, NULL, &m2, NULL), -EBADMSG);
}
END_TEST

START_TEST(test_verify_comment_for_another_version)
{
    SignSignature sig;
    _cleanup_free_ char *msg = NULL;
    /* A valid signature, but of shop 2.0: it cannot vouch for shop 1.0. */
    ck_assert_int_eq(verify("v2.minisig", "rel.tar.gz", key_a, NULL, &msg, &sig), 0);
    Diag d = {0};
    ck_assert_int_eq(sign_comment_check(sig.trusted_comment, "shop", "1.0", &d), -EPERM);
    ck_assert_str_eq(d.errors.v[0], "the signature is for release shop 2.0, not shop 1.0");
    diag_clear(&d);
    ck_assert_int_eq(sign_comment_check(sig.trusted_comment, "shopx", "2.0", &scratch), -EPERM);
    ck_assert_int_eq(sign_comment_check(sig.trusted_comment, "shop", "2.0", &scratch), 0);
}
END_TEST

START_TEST(test_verify_trusted_comment_edited)
{
    _cleanup_free_ char *t = slurp("good.minisig", NULL);
    _cleanup_free_ char *e = replace_line(t, 2, "trusted comment: reld release=shop vsn=2.0");
    spit("edited.minisig", e, strlen(e));
    _cleanup_free_ char *msg = NULL;
    ck_assert_int_eq(verify("edited.minisig", "rel.tar.gz", key_a, NULL, &msg, NULL), -EBADMSG);
    ck_assert_msg(strstr(msg, "trusted comment does not verify"), "%s", msg);
}
END_TEST

START_TEST(test_verify_default_minisign_comment_refused)
{
    SignSignature sig;
    _cleanup_free_ char *msg = NULL;
    ck_assert_int_eq(verify("default.minisig", "rel.tar.gz", key_a, NULL, &msg, &sig), 0);
    Diag d = {0};
    ck_assert_int_eq(sign_comment_check(sig.trusted_comment, "shop", "1.0", &d), -EINVAL);
    ck_assert_msg(strstr(d.errors.v[0], "-t \"reld release=NAME vsn=VSN\""), "%s", d.errors.v[0]);
    diag_clear(&d);
}
END_TEST

START_TEST(test_verify_legacy_refused)
{
    _cleanup_free_ char *msg = NULL;
    ck_assert_int_eq(verify("legacy.minisig", "rel.tar.gz", key_a, NULL, &msg, NULL), -ENOTSUP);
    ck_assert_msg(strstr(msg, "legacy"), "%s", msg);
}
END_TEST

START_TEST(test_signature_truncated)
{
    size_t len;
    _cleanup_free_ char *t = slurp("good.minisig", &len);
    /* Every prefix but the whole (and the whole less its last newline). */
    for (size_t n = 0; n < len - 1; n++) {
        SignSignature sig;
        Diag d = {0};
        int r = sign_signature_parse(t, n, "good.minisig", &sig, &d);
        ck_assert_msg(r == -EINVAL, "prefix %zu: %d", n, r);
        ck_assert_uint_eq(d.errors.n, 1);
        diag_clear(&d);
    }
    SignSignature sig;
    ck_assert_int_eq(sign_signature_parse(t, len - 1, "s", &sig, &scratch), 0);
}
END_TEST

START_TEST(test_signature_garbage_in_each_line)
{
    _cleanup_free_ char *t = slurp("good.minisig", NULL);
    _cleanup_free_ char *l2 = line_of(t, 1), *l4 = line_of(t, 3);
    /* The same base64 with one character changed: decodes, does not verify. */
    _cleanup_free_ char *l2f = xstrdup(l2), *l4f = xstrdup(l4);
    l2f[40] = l2f[40] == 'A' ? 'B' : 'A';
    l4f[10] = l4f[10] == 'A' ? 'B' : 'A';
    struct {
        int line;
        const char *with;
        int want;
        const char *where;
    } cases[] = {
        {0, "untrusted: x", -EINVAL, "g.minisig:1:"},
        {0, "", -EINVAL, "g.minisig:1:"},
        {1, "RUT+garbage!!", -EINVAL, "g.minisig:2:"},
        {1, "", -EINVAL, "g.minisig:2:"},
        {1, l2f, -EBADMSG, "signature by key"},
        {2, "reld release=shop vsn=1.0", -EINVAL, "g.minisig:3:"},
        {2, "trusted comment:reld release=shop vsn=1.0", -EINVAL, "g.minisig:3:"},
        {3, "####", -EINVAL, "g.minisig:4:"},
        {3, "", -EINVAL, "g.minisig:4:"},
        {3, l4f, -EBADMSG, "trusted comment does not verify"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        _cleanup_free_ char *e = replace_line(t, cases[i].line, cases[i].with);
        spit("g.minisig", e, strlen(e));
        _cleanup_free_ char *msg = NULL;
        ck_assert_int_eq(verify("g.minisig", "rel.tar.gz", key_a, NULL, &msg, NULL), cases[i].want);
        ck_assert_msg(strncmp(msg, cases[i].where, strlen(cases[i].where)) == 0, "case %zu: %s", i, msg);
    }
    /* A fifth line, and a NUL byte. */
    _cleanup_free_ char *five = xasprintf("%sextra\n", t);
    SignSignature sig;
    ck_assert_int_eq(sign_signature_parse(five, strlen(five), "s", &sig, &scratch), -EINVAL);
    _cleanup_free_ char *nul = xstrdup(t);
    ck_assert_int_eq(sign_signature_parse(nul, strlen(t) + 1, "s", &sig, &scratch), -EINVAL);
    /* A trusted comment too long. */
    char longc[SIGN_COMMENT_MAX + 40];
    memset(longc, 'x', sizeof longc - 1);
    longc[sizeof longc - 1] = '\0';
    memcpy(longc, "trusted comment: ", 17);
    _cleanup_free_ char *lc = replace_line(t, 2, longc);
    ck_assert_int_eq(sign_signature_parse(lc, strlen(lc), "s", &sig, &scratch), -EINVAL);
}
END_TEST

/* ---- signing -------------------------------------------------------------- */

START_TEST(test_sign_verifies_in_minisign_and_here)
{
    SignSecretKey sk = load_sec("b.sec");
    uint8_t hash[SIGN_HASH_SIZE];
    hash_file("rel.tar.gz", hash);
    _cleanup_free_ char *text = NULL;
    ck_assert_int_eq(sign_create(&sk, hash, "reld release=shop vsn=1.0", &text, &scratch), 0);
    spit("ours.minisig", text, strlen(text));
    ck_assert_int_eq(run("minisign -V -p b.pub -m rel.tar.gz -x ours.minisig"), 0);
    ck_assert_int_ne(run("minisign -V -p a.pub -m rel.tar.gz -x ours.minisig"), 0);
    ck_assert_int_ne(run("minisign -V -p b.pub -m other.tar.gz -x ours.minisig"), 0);
    SignSignature sig;
    _cleanup_free_ char *msg = NULL;
    ck_assert_int_eq(verify("ours.minisig", "rel.tar.gz", key_b, NULL, &msg, &sig), 0);
    ck_assert_str_eq(sig.trusted_comment, "reld release=shop vsn=1.0");
    /* minisign prints the trusted comment it verified. */
    ck_assert_int_eq(run("minisign -V -p b.pub -m rel.tar.gz -x ours.minisig | grep -qx 'Trusted comment: reld "
                         "release=shop vsn=1.0'"),
                     0);
}
END_TEST

START_TEST(test_sign_bad_comment)
{
    SignSecretKey sk = load_sec("b.sec");
    uint8_t hash[SIGN_HASH_SIZE] = {0};
    char *text = (char *)"untouched";
    Diag d = {0};
    ck_assert_int_eq(sign_create(&sk, hash, "two\nlines", &text, &d), -EINVAL);
    ck_assert_str_eq(text, "untouched");
    ck_assert_uint_eq(d.errors.n, 1);
    diag_clear(&d);
}
END_TEST

/* ---- comments ------------------------------------------------------------- */

START_TEST(test_comment_grammar)
{
    _cleanup_free_ char *c = sign_comment_format("shop", "1.0.2-rc1");
    ck_assert_str_eq(c, "reld release=shop vsn=1.0.2-rc1");
    ck_assert_ptr_null(sign_comment_format("sh op", "1"));
    ck_assert_ptr_null(sign_comment_format("shop", "1 2"));
    char *n = NULL, *v = NULL;
    ck_assert_int_eq(sign_comment_parse("reld release=shop vsn=1.0 build 77 on ci", &n, &v, &scratch), 0);
    ck_assert_str_eq(n, "shop");
    ck_assert_str_eq(v, "1.0");
    free(n);
    free(v);
    static const char *const bad[] = {
        "",
        "reld",
        "reld release=",
        "reld release=shop",
        "reld release=shop vsn=",
        "reld release=shop  vsn=1",
        "reld release=shop\tvsn=1",
        "reld vsn=1 release=shop",
        "timestamp:1\tfile:x",
        "reld release=../x vsn=1",
        " reld release=shop vsn=1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        Diag d = {0};
        n = v = NULL;
        ck_assert_msg(sign_comment_parse(bad[i], &n, &v, &d) == -EINVAL, "%s", bad[i]);
        ck_assert_ptr_null(n);
        ck_assert_uint_eq(d.errors.n, 1);
        diag_clear(&d);
    }
}
END_TEST

/* ---- keyring -------------------------------------------------------------- */

START_TEST(test_keyring_load)
{
    ck_assert_int_eq(run("mkdir -p kr/trusted kr/revoked && cp a.pub b.pub kr/trusted/ && touch kr/trusted/.hidden"),
                     0);
    _cleanup_free_ char *revoked = xasprintf("# the laptop key, lost 2026-11\n\n  %s  \n", a_id);
    spit("kr/revoked/laptop", revoked, strlen(revoked));
    _cleanup_free_ char *t = path("kr/trusted"), *rv = path("kr/revoked"), *none = path("kr/none");
    SignKeyring k = {0};
    Diag d = {0};
    ck_assert_int_eq(sign_keyring_load(&k, t, rv, &d), 0);
    ck_assert_uint_eq(k.n_keys, 2);
    ck_assert_uint_eq(k.n_revoked, 1);
    SignPublicKey a = load_pub("a.pub");
    ck_assert(sign_keyring_is_revoked(&k, a.id));
    /* A public key file in revoked.d revokes that key. */
    ck_assert_int_eq(run("rm kr/revoked/laptop && cp b.pub kr/revoked/"), 0);
    ck_assert_int_eq(sign_keyring_load(&k, t, rv, &d), 0);
    SignPublicKey b = load_pub("b.pub");
    ck_assert(sign_keyring_is_revoked(&k, b.id));
    ck_assert(!sign_keyring_is_revoked(&k, a.id));
    /* Directories that do not exist are empty. */
    ck_assert_int_eq(sign_keyring_load(&k, none, none, &d), 0);
    ck_assert_uint_eq(k.n_keys + k.n_revoked, 0);
    ck_assert_uint_eq(d.errors.n, 0);
    sign_keyring_clear(&k);
}
END_TEST

START_TEST(test_keyring_bad_file_fails_the_load)
{
    ck_assert_int_eq(run("rm -rf kb && mkdir -p kb/trusted kb/revoked kb/dir && cp a.pub kb/trusted/ && echo nonsense "
                         "> kb/trusted/zz.pub && echo 'not-an-id' > kb/revoked/r && mkdir kb/dir/sub"),
                     0);
    _cleanup_free_ char *t = path("kb/trusted"), *rv = path("kb/revoked"), *sub = path("kb/dir");
    SignKeyring k = {0};
    SignPublicKey a = load_pub("a.pub");
    sign_keyring_add(&k, &a);
    Diag d = {0};
    ck_assert_int_eq(sign_keyring_load(&k, t, NULL, &d), -EINVAL);
    ck_assert_uint_eq(k.n_keys, 0); /* left empty */
    ck_assert_uint_eq(d.errors.n, 1);
    ck_assert_msg(strstr(d.errors.v[0], "kb/trusted/zz.pub"), "%s", d.errors.v[0]);
    diag_clear(&d);
    ck_assert_int_eq(sign_keyring_load(&k, NULL, rv, &d), -EINVAL);
    ck_assert_msg(strstr(d.errors.v[0], "kb/revoked/r:1: not a key id"), "%s", d.errors.v[0]);
    diag_clear(&d);
    ck_assert_int_eq(sign_keyring_load(&k, sub, NULL, &d), -EINVAL); /* a directory in it */
    ck_assert_uint_eq(d.errors.n, 1);
    diag_clear(&d);
    _cleanup_free_ char *file = path("a.pub");
    ck_assert_int_eq(sign_keyring_load(&k, file, NULL, &d), -ENOTDIR);
    diag_clear(&d);
    sign_keyring_clear(&k);
}
END_TEST

static Suite *sign_suite(void)
{
    Suite *s = suite_create("sign");
    TCase *tc = tcase_create("keys");
    tcase_add_test(tc, test_public_key_id_as_minisign_prints_it);
    tcase_add_test(tc, test_public_key_bare_line);
    tcase_add_test(tc, test_public_key_garbage);
    tcase_add_test(tc, test_secret_key_public_half);
    tcase_add_test(tc, test_secret_key_damaged_or_encrypted);
    tcase_add_test(tc, test_secret_key_encrypted);
    tcase_set_timeout(tc, 60); /* scrypt with minisign's 1 GiB, under ASan */
    suite_add_tcase(s, tc);
    tc = tcase_create("verify");
    tcase_add_test(tc, test_verify_minisign_signature);
    tcase_add_test(tc, test_verify_rotation_two_keys);
    tcase_add_test(tc, test_verify_wrong_key);
    tcase_add_test(tc, test_verify_no_keys);
    tcase_add_test(tc, test_verify_revoked_key);
    tcase_add_test(tc, test_verify_another_file);
    tcase_add_test(tc, test_verify_tarball_changed_after_signing);
    tcase_add_test(tc, test_verify_comment_for_another_version);
    tcase_add_test(tc, test_verify_trusted_comment_edited);
    tcase_add_test(tc, test_verify_default_minisign_comment_refused);
    tcase_add_test(tc, test_verify_legacy_refused);
    tcase_add_test(tc, test_signature_truncated);
    tcase_add_test(tc, test_signature_garbage_in_each_line);
    suite_add_tcase(s, tc);
    tc = tcase_create("sign");
    tcase_add_test(tc, test_sign_verifies_in_minisign_and_here);
    tcase_add_test(tc, test_sign_bad_comment);
    tcase_add_test(tc, test_comment_grammar);
    suite_add_tcase(s, tc);
    tc = tcase_create("keyring");
    tcase_add_test(tc, test_keyring_load);
    tcase_add_test(tc, test_keyring_bad_file_fails_the_load);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    setup_once();
    SRunner *sr = srunner_create(sign_suite());
    srunner_run_all(sr, CK_ENV);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    _cleanup_free_ char *rm = xasprintf("rm -rf '%s'", dir);
    if (system(rm) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
