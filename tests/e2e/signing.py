#!/usr/bin/env python3
"""Signed releases (issue 14, docs/signing.md) end to end: the real reld on a
temporary root, the real relctl, and Debian's minisign making keys and
signatures both ways; the downgrade floor.

Usage: signing.py --reld PATH --relctl PATH --shop SHOP_ROOT
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon as d  # noqa: E402  (tap, Reld, release_tar, run_tests, tree)

A = None
REL1, REL2 = d.REL1, d.REL2


def minisign(*args, cwd=None):
    p = subprocess.run(["minisign", *args], capture_output=True, stdin=subprocess.DEVNULL, cwd=cwd, timeout=60)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def keypair(work, name):
    """An unencrypted minisign key pair: (secret, public, key id)."""
    sec, pub = os.path.join(work, name + ".sec"), os.path.join(work, name + ".pub")
    rc, o, e = minisign("-G", "-W", "-p", pub, "-s", sec)
    assert rc == 0, e
    kid = open(pub).readline().split()[-1]
    return sec, pub, kid


def sign(sec, path, comment, sig=None):
    rc, o, e = minisign("-S", "-s", sec, "-m", path, "-x", sig or path + ".minisig", *(["-t", comment] if comment else []))
    assert rc == 0, e
    return sig or path + ".minisig"


def layout(work, name, vsn, apps):
    """A directory laid out as the tarball of the shop's release vsn."""
    dd = os.path.join(work, name)
    os.makedirs(os.path.join(dd, "lib"))
    shutil.copytree(os.path.join(A.shop, "releases", vsn), os.path.join(dd, "releases", vsn))
    for a in apps:
        shutil.copytree(os.path.join(A.shop, "lib", a), os.path.join(dd, "lib", a))
    return dd


def unchanged(r, before, what, err):
    """The root holds nothing new: in tmp/ (reld's scratch directory, which
    the first spool or staging makes) nothing either, as a spool is an
    unnamed file and a refused staging directory goes."""
    after = d.tree(r.root)
    if "tmp" not in before and os.path.isdir(os.path.join(r.root, "tmp")) and not os.listdir(
            os.path.join(r.root, "tmp")):
        after.discard("tmp")
    d.tap(after == before, f"{what}: nothing written under the root", f"{err}\nnew: {sorted(after - before)}")


class Setup:
    def __init__(self, work):
        self.work = work
        self.trusted = os.path.join(work, "trusted.d")
        self.revoked = os.path.join(work, "revoked.d")
        os.makedirs(self.trusted)
        os.makedirs(self.revoked)
        self.ci1 = keypair(work, "ci1")
        self.ci2 = keypair(work, "ci2")
        self.laptop = keypair(work, "laptop")
        self.r = d.Reld(work, config=f"trusted_keys: {self.trusted}\nrevoked_keys: {self.revoked}\n")

    def trust(self, *keys):
        for k in keys:
            shutil.copy(k[1], os.path.join(self.trusted, os.path.basename(k[1])))


def test_without_keys_unsigned_unpacks(work):
    s = Setup(work)
    rc, o, err = s.r.relctl("status")
    d.tap(rc == 0 and f"signatures: not required (no trusted key in {s.trusted})" in o,
          "status says signatures are not required without a trusted key", o + err)
    s.r.stop()
    log = open(os.path.join(work, "reld.log")).read()
    d.tap(f"signatures: not required (no trusted key in {s.trusted})" in log, "and so does reld at start", log)
    s.r.start()
    t = d.release_tar(A.shop, *REL1, os.path.join(work, "shop-1.0.tar.gz"))
    rc, o, err = s.r.relctl("unpack", t)
    d.tap(rc == 0 and "unpacked release shop 1.0" in o, "without keys an unsigned tarball unpacks as before", err)
    s.r.stop()


def test_both_directions_and_rotation(work):
    s = Setup(work)
    s.trust(s.ci1, s.ci2)
    rc, o, err = s.r.relctl("status")
    d.tap(f"signatures: required (2 trusted keys in {s.trusted}, 0 revoked)" in o, "status counts the trusted keys",
          o + err)
    # reld's tools sign (relctl pack --sign), minisign verifies.
    out = os.path.join(work, "shop-1.0.tar.gz")
    rc, o, err = s.r.relctl("pack", layout(work, "d1", *REL1), "-o", out, "--sign", s.ci1[0])
    d.tap(rc == 0 and os.path.exists(out + ".minisig") and "signed it" in o, "relctl pack --sign writes X.minisig",
          o + err)
    rc, o, err = minisign("-V", "-p", s.ci1[1], "-m", out)
    d.tap(rc == 0 and "Trusted comment: reld release=shop vsn=1.0" in o,
          "minisign -V verifies what relctl signed, and its trusted comment binds shop 1.0", o + err)
    rc, o, err = minisign("-V", "-p", s.ci2[1], "-m", out)
    d.tap(rc != 0, "and not with another key", o + err)
    # ... and reld verifies it (relctl finds X.minisig beside X).
    rc, o, err = s.r.relctl("unpack", "--json", out)
    rep = json.loads(o) if rc == 0 else {}
    sig = rep.get("signature", {})
    d.tap(rc == 0 and sig.get("key_id") == s.ci1[2] and sig.get("trusted_comment") == "reld release=shop vsn=1.0"
          and len(sig.get("blake2b", "")) == 128, "reld unpacks what relctl signed, and says by which key", o + err)
    # An encrypted key (minisign's default), its password in a file.
    enc_sec, enc_pub = os.path.join(work, "enc.sec"), os.path.join(work, "enc.pub")
    p = subprocess.run(["minisign", "-G", "-p", enc_pub, "-s", enc_sec], input=b"s3cret\ns3cret\n",
                       capture_output=True, timeout=120)
    pw, bad_pw = os.path.join(work, "pw"), os.path.join(work, "bad-pw")
    with open(pw, "w") as f:
        f.write("s3cret\n")
    with open(bad_pw, "w") as f:
        f.write("secret\n")
    enc_out = os.path.join(work, "enc-1.0.tar.gz")
    rc, o, err = s.r.relctl("pack", layout(work, "d1e", *REL1), "-o", enc_out, "--sign", enc_sec, "--password-file",
                            bad_pw)
    d.tap(p.returncode == 0 and rc == 1 and len(err.strip().splitlines()) == 1 and "wrong password" in err
          and not os.path.exists(enc_out) and not os.path.exists(enc_out + ".minisig"),
          "pack --sign with an encrypted key and a wrong password: one line, nothing written", o + err)
    rc, o, err = s.r.relctl("pack", os.path.join(work, "d1e"), "-o", enc_out, "--sign", enc_sec, "--password-file", pw)
    rc2, o2, err2 = minisign("-V", "-p", enc_pub, "-m", enc_out)
    d.tap(rc == 0 and rc2 == 0, "pack --sign with an encrypted key and its password: minisign -V verifies it",
          o + err + o2 + err2)
    # minisign signs, reld verifies; the second trusted key (rotation).
    t2 = d.release_tar(A.shop, *REL2, os.path.join(work, "shop-2.0.tar.gz"))
    other = os.path.join(work, "ci2-shop-2.0.minisig")
    sign(s.ci2[0], t2, "reld release=shop vsn=2.0", other)
    rc, o, err = s.r.relctl("unpack", "--signature", other, t2)
    d.tap(rc == 0 and "unpacked release shop 2.0" in o,
          "reld unpacks what minisign signed with the second trusted key (--signature FILE)", o + err)
    rc, o, err = s.r.relctl("history", "--json")
    d.tap(rc == 0 and s.ci1[2] in o and s.ci2[2] in o and "reld release=shop vsn=2.0" in o and sig.get("blake2b", "-") in o,
          "the history records each unpack's key id, trusted comment and hash", o[:3000] + err)
    s.r.stop()


def test_refusals(work):
    s = Setup(work)
    s.trust(s.ci1, s.ci2)
    t = d.release_tar(A.shop, *REL1, os.path.join(work, "shop-1.0.tar.gz"))
    before = d.tree(s.r.root)

    def refused(what, want, *args, path=t):
        rc, o, err = s.r.relctl("unpack", *args, path)
        lines = [x for x in err.splitlines() if x]
        d.tap(rc != 0 and len(lines) == 1 and want in err, f"{what}: refused with one line", f"rc {rc}\n{o}{err}")
        unchanged(s.r, before, what, err)

    refused("an unsigned tarball", "the tarball is not signed")
    good = sign(s.ci1[0], t, "reld release=shop vsn=1.0", os.path.join(work, "good.minisig"))
    text = open(good).read()
    lines = text.splitlines()

    def with_sig(name, content):
        p = os.path.join(work, name)
        with open(p, "w") as f:
            f.write(content)
        return p

    refused("a truncated signature", "not a minisign signature", "--signature",
            with_sig("trunc.minisig", text[: len(text) // 2]))
    refused("a signature file missing", "No such file", "--signature", os.path.join(work, "absent.minisig"))
    refused("a key not trusted", f"signed by key {s.laptop[2]}, which is not trusted", "--signature",
            sign(s.laptop[0], t, "reld release=shop vsn=1.0", os.path.join(work, "laptop.minisig")))
    t2 = d.release_tar(A.shop, *REL2, os.path.join(work, "shop-2.0.tar.gz"))
    refused("the signature of another tarball", "does not match the tarball", "--signature",
            sign(s.ci1[0], t2, "reld release=shop vsn=1.0", os.path.join(work, "of2.minisig")))
    refused("a trusted comment naming another version", "the signature is for release shop 2.0, but the tarball "
            "holds shop 1.0", "--signature",
            sign(s.ci1[0], t, "reld release=shop vsn=2.0", os.path.join(work, "v2.minisig")))
    refused("a trusted comment naming another release", "the signature is for release kv 1.0", "--signature",
            sign(s.ci1[0], t, "reld release=kv vsn=1.0", os.path.join(work, "kv.minisig")))
    refused("minisign's default trusted comment", "does not start with \"reld release=\"", "--signature",
            sign(s.ci1[0], t, None, os.path.join(work, "default.minisig")))
    changed = os.path.join(work, "changed.tar.gz")
    shutil.copy(t, changed)
    with open(changed, "ab") as f:
        f.write(b"\0")
    refused("a tarball changed after signing", "does not match the tarball", "--signature", good, path=changed)
    garbage = [(0, "untrusted: x", "signature:1:"), (1, "RUT+garbage", "signature:2:"),
               (2, "trusted comment reld release=shop vsn=1.0", "signature:3:"), (3, "####", "signature:4:"),
               (2, "trusted comment: reld release=shop vsn=1.0 edited", "trusted comment does not verify")]
    for i, (n, junk, want) in enumerate(garbage):
        bad = list(lines)
        bad[n] = junk
        refused(f"garbage in line {n + 1} of the signature ({junk!r})", want, "--signature",
                with_sig(f"g{i}.minisig", "\n".join(bad) + "\n"))
    # install passes the signature too: refused before anything runs.
    rc, o, err = s.r.relctl("install", "--signature", with_sig("g9.minisig", "x\n"), t)
    d.tap(rc != 0 and "not a minisign signature" in err, "install TARBALL checks the signature first", o + err)
    unchanged(s.r, before, "install with a bad signature", err)
    rc, o, err = s.r.relctl("install", "--signature", good, "1.0")
    d.tap(rc == 2 and "--signature goes with a tarball" in err, "install --signature VSN is a usage error", o + err)
    # A key file that does not parse refuses every unpack (fail closed), and status says so.
    with open(os.path.join(s.trusted, "broken.pub"), "w") as f:
        f.write("untrusted comment: x\nnot a key\n")
    refused("a damaged file in trusted.d", "broken.pub", "--signature", good)
    rc, o, err = s.r.relctl("status")
    d.tap("signatures: every unpack refused" in o and "broken.pub" in o, "status says a damaged key file refuses "
          "every unpack", o + err)
    os.unlink(os.path.join(s.trusted, "broken.pub"))
    rc, o, err = s.r.relctl("unpack", "--signature", good, t)
    d.tap(rc == 0 and "unpacked release shop 1.0" in o, "the good signature unpacks (keys read at each unpack)",
          o + err)
    s.r.stop()


def test_revocation(work):
    s = Setup(work)
    s.trust(s.ci1, s.ci2)
    t = d.release_tar(A.shop, *REL1, os.path.join(work, "shop-1.0.tar.gz"))
    by1 = sign(s.ci1[0], t, "reld release=shop vsn=1.0", os.path.join(work, "by1.minisig"))
    with open(os.path.join(s.revoked, "ci1-lost"), "w") as f:
        f.write(f"# ci1's key left with a laptop\n{s.ci1[2]}\n")
    before = d.tree(s.r.root)
    rc, o, err = s.r.relctl("unpack", "--signature", by1, t)
    d.tap(rc != 0 and f"signed by key {s.ci1[2]}, which is revoked" in err, "a revoked key is refused, though trusted",
          o + err)
    unchanged(s.r, before, "a revoked key", err)
    rc, o, err = s.r.relctl("status")
    d.tap("1 revoked" in o, "status counts the revoked keys", o + err)
    # A public key file in revoked.d revokes too.
    os.unlink(os.path.join(s.revoked, "ci1-lost"))
    shutil.copy(s.ci2[1], os.path.join(s.revoked, "ci2.pub"))
    by2 = sign(s.ci2[0], t, "reld release=shop vsn=1.0", os.path.join(work, "by2.minisig"))
    rc, o, err = s.r.relctl("unpack", "--signature", by2, t)
    d.tap(rc != 0 and "which is revoked" in err, "a public key in revoked.d revokes it", o + err)
    rc, o, err = s.r.relctl("unpack", "--signature", by1, t)
    d.tap(rc == 0, "the key no longer revoked signs again", o + err)
    s.r.stop()


def test_downgrade_floor(work):
    r = d.Reld(work, config="min_version: \"1.5\"\nrefuse_older_than_permanent: true\n")
    t1 = d.release_tar(A.shop, *REL1, os.path.join(work, "shop-1.0.tar.gz"))
    t2 = d.release_tar(A.shop, *REL2, os.path.join(work, "shop-2.0.tar.gz"))
    before = d.tree(r.root)
    rc, o, err = r.relctl("unpack", t1)
    d.tap(rc == 1 and err.strip() == "relctl: release 1.0 is older than min_version 1.5; --allow-downgrade unpacks "
          "it anyway", "a release older than min_version is refused with one line", o + err)
    unchanged(r, before, "a release under the floor", err)
    rc, o, err = r.relctl("install", t1)
    d.tap(rc == 1 and "older than min_version 1.5" in err, "install TARBALL is refused the same", o + err)
    rc, o, err = r.relctl("install", "--allow-downgrade", "1.0")
    d.tap(rc == 2 and "--allow-downgrade goes with a tarball" in err, "install --allow-downgrade VSN: usage", o + err)
    rc, o, err = r.relctl("install", "--commit", t2)  # runs the shop: this test takes its port
    d.tap(rc == 0, "a release above the floor installs, and is made permanent", o + err)
    r.stop()
    r.config = "refuse_older_than_permanent: true\n"
    r.start()
    rc, o, err = r.relctl("unpack", t1)
    d.tap(rc == 1 and "release 1.0 is older than the permanent release 2.0 (refuse_older_than_permanent)" in err,
          "with refuse_older_than_permanent a release older than the permanent one is refused", o + err)
    rc, o, err = r.relctl("unpack", "--allow-downgrade", t1)
    d.tap(rc == 0 and "unpacked release shop 1.0" in o, "--allow-downgrade unpacks it", o + err)
    rc, o, err = r.relctl("unpack", "--json", t1)
    d.tap(rc == 0 and json.loads(o).get("unchanged") is True,
          "the same tarball again, present: not a downgrade, unchanged", o + err)
    r.stop()


def piped(*parts, trickle=0):
    """A real pipe carrying the files' bytes one after the other, the first
    `trickle` bytes one write at a time (as a slow ssh link delivers them)."""
    data = b"".join(open(x, "rb").read() for x in parts)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            for i in range(min(trickle, len(data))):
                os.write(w, data[i:i + 1])
            view = memoryview(data)[min(trickle, len(data)):]
            while view:
                view = view[os.write(w, view):]
        except BrokenPipeError:
            pass
        os._exit(0)
    os.close(w)
    return r, pid


def relctl_piped(r, args, parts, trickle=0):
    fd, pid = piped(*parts, trickle=trickle)
    try:
        return r.relctl(*args, stdin=fd)
    finally:
        os.close(fd)
        os.waitpid(pid, 0)


def release_row(r, vsn):
    rc, o, err = r.relctl("releases", "--json")
    rows = json.loads(o).get("releases", []) if rc == 0 else []
    return next((x for x in rows if x.get("vsn") == vsn), {})


def test_stream_carries_both(work):
    s = Setup(work)
    s.trust(s.ci1)
    t1 = d.release_tar(A.shop, *REL1, os.path.join(work, "shop-1.0.tar.gz"))
    t2 = d.release_tar(A.shop, *REL2, os.path.join(work, "shop-2.0.tar.gz"))
    sig1 = sign(s.ci1[0], t1, "reld release=shop vsn=1.0")
    sig2 = sign(s.ci1[0], t2, "reld release=shop vsn=2.0")
    before = d.tree(s.r.root)

    def refused(what, want, parts, *args):
        rc, o, err = relctl_piped(s.r, ("unpack", *args, "-"), parts)
        lines = [x for x in err.splitlines() if x]
        d.tap(rc == 1 and len(lines) == 1 and want in err, f"standard input, {what}: refused with one line",
              f"rc {rc}\n{o}{err}")
        unchanged(s.r, before, f"standard input, {what}", err)

    refused("a tarball without its signature", "the tarball is not signed", (t1,))
    lying = sign(s.ci1[0], t1, "reld release=shop vsn=2.0", os.path.join(work, "lying.minisig"))
    refused("a signature that names another release", "the signature is for release shop 2.0", (lying, t1))
    refused("the signature of another tarball", "does not match the tarball", (sig2, t1))
    refused("a signature and --signature", "two signatures", (sig1, t1), "--signature", sig1)
    cut = os.path.join(work, "cut.minisig")
    with open(cut, "w") as f:
        f.write("".join(open(sig1).readlines()[:2]))
    refused("a stream that ends inside its signature", "ends inside the signature", (cut,))
    long_sig = os.path.join(work, "long.minisig")
    with open(long_sig, "w") as f:  # four lines, but 5,000 bytes in the first
        f.write("untrusted comment: " + "x" * 5000 + "\n" + "".join(open(sig1).readlines()[1:]))
    refused("a signature longer than 4096 bytes", "does not end within 4096 bytes", (long_sig, t1))
    rc, o, err = relctl_piped(s.r, ("unpack", "--json", "-"), (sig1, t1), trickle=400)
    rep = json.loads(o) if rc == 0 else {}
    d.tap(rc == 0 and rep.get("signature", {}).get("key_id") == s.ci1[2],
          "cat X.minisig X.tar.gz | relctl unpack -: verified and unpacked (the signature a byte at a time)", o + err)
    row = release_row(s.r, "1.0")
    sig = row.get("signature") or {}
    d.tap(sig.get("key_id") == s.ci1[2] and sig.get("trusted_comment") == "reld release=shop vsn=1.0"
          and sig.get("blake2b") == rep.get("signature", {}).get("blake2b") and len(sig.get("blake2b", "")) == 128,
          "relctl releases --json shows the release's key id, trusted comment and tarball hash", json.dumps(row))
    rc, o, err = s.r.relctl("releases")
    d.tap(rc == 0 and "1.0" in o, "relctl releases still lists it as text", o + err)
    s.r.stop()
    # Without a trusted key the same stream unpacks as before, unsigned.
    nokeys = os.path.join(work, "nokeys")
    os.makedirs(os.path.join(nokeys, "trusted.d"))
    r = d.Reld(nokeys, config=f"trusted_keys: {nokeys}/trusted.d\n")
    rc, o, err = relctl_piped(r, ("unpack", "-"), (sig2, t2))
    d.tap(rc == 0 and "unpacked release shop 2.0" in o and release_row(r, "2.0").get("signature", 0) is None,
          "without keys: the signature at the start of the stream is set aside, the release unsigned", o + err)
    r.stop()


def main():
    global A
    ap = argparse.ArgumentParser()
    ap.add_argument("--reld", required=True)
    ap.add_argument("--relctl", required=True)
    ap.add_argument("--shop", required=True)
    A = ap.parse_args()
    A.shop = d.private_shop(A.shop)  # its own port: not the other shop suites'
    d.A = A
    return d.run_tests((test_without_keys_unsigned_unpacks, test_both_directions_and_rotation, test_refusals,
                        test_revocation, test_downgrade_floor, test_stream_carries_both), "reld-sign-")


if __name__ == "__main__":
    sys.exit(main())
