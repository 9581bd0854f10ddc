/* check: a release's modules, executables and appups, before anything of
 * it runs (check.h). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <nettle/sha2.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check-elf.h"
#include "check.h"
#include "reld-runtime.h" /* RELD_MODULE_ABI: the ABI the runtime loads */
#include "relup.h"
#include "store.h"

#define MAX_LIB_DEPTH  16  /* libraries of the release that need libraries of the release */
#define MAX_CONF_DEPTH 8   /* ld.so.conf includes */
#define SCRIPT_HEAD    256 /* what the kernel reads of a #! line (BINPRM_BUF_SIZE) */

/* ---- findings ---------------------------------------------------------------- */

static const char *const severity_names[] = {[CHECK_WARNING] = "warning", [CHECK_ERROR] = "error"};

const char *check_severity_name(CheckSeverity s)
{
    return s <= CHECK_ERROR ? severity_names[s] : "?";
}

static void add(CheckReport *rep, CheckSeverity sev, const char *file, int line, int col, const char *fmt, ...)
    UTIL_PRINTF(6, 7);
static void add(CheckReport *rep, CheckSeverity sev, const char *file, int line, int col, const char *fmt, ...)
{
    GROW(rep->v, rep->cap, rep->n + 1);
    va_list ap;
    va_start(ap, fmt);
    rep->v[rep->n++] = (CheckFinding){.severity = sev,
                                      .file = xstrdup(file ? file : "<release>"),
                                      .line = line,
                                      .col = col,
                                      .message = xvasprintf(fmt, ap)};
    va_end(ap);
    if (sev == CHECK_ERROR)
        rep->n_errors++;
    else
        rep->n_warnings++;
}

/* A line another library wrote ("file:line:col: what", "file: what" or
 * just "what") as a finding; fallback names the file when the line does not. */
static void add_line(CheckReport *rep, CheckSeverity sev, const char *line, const char *fallback)
{
    const char *colon = strstr(line, ": ");
    int l = 0, c = 0, used = 0;
    if (colon && !memchr(line, ' ', (size_t)(colon - line))) {
        /* The file part: up to ":L:C" when the numbers are there. */
        const char *p = line;
        const char *end = colon;
        for (const char *q = line; q < colon; q++)
            if (*q == ':' && sscanf(q, ":%d:%d:%n", &l, &c, &used) == 2 && q + used == colon + 1) {
                end = q;
                break;
            }
        if (end == colon)
            l = c = 0;
        char *file = xstrndup(p, (size_t)(end - p));
        add(rep, sev, file, l, c, "%s", colon + 2);
        free(file);
        return;
    }
    add(rep, sev, fallback, 0, 0, "%s", line);
}

static void add_diag(CheckReport *rep, const Diag *d, const char *fallback)
{
    for (size_t i = 0; i < d->errors.n; i++)
        add_line(rep, CHECK_ERROR, d->errors.v[i], fallback);
    for (size_t i = 0; i < d->warnings.n; i++)
        add_line(rep, CHECK_WARNING, d->warnings.v[i], fallback);
}

char *check_finding_format(const CheckFinding *f)
{
    if (f->line > 0)
        return xasprintf("%s:%d:%d: %s: %s", f->file, f->line, f->col, check_severity_name(f->severity), f->message);
    return xasprintf("%s: %s: %s", f->file, check_severity_name(f->severity), f->message);
}

void check_module_desc_clear(CheckModuleDesc *d)
{
    free(d->name);
    free(d->version);
    *d = (CheckModuleDesc){0};
}

static void modules_clear(CheckReport *rep)
{
    for (size_t i = 0; i < rep->n_modules; i++) {
        CheckModuleInfo *m = &rep->modules[i];
        free(m->app);
        free(m->app_vsn);
        free(m->module);
        free(m->file);
        check_module_desc_clear(&m->desc);
    }
    free(rep->modules);
    rep->modules = NULL;
    rep->n_modules = rep->cap_modules = 0;
}

void check_report_clear(CheckReport *rep)
{
    for (size_t i = 0; i < rep->n; i++) {
        free(rep->v[i].file);
        free(rep->v[i].message);
    }
    free(rep->v);
    modules_clear(rep);
    *rep = (CheckReport){0};
}

/* A string from a file, fit for a message of one line: bytes outside
 * printable ASCII as \xNN. Caller frees. */
static char *printable(const char *s)
{
    if (!s)
        return xstrdup("(null)");
    char *out = xmalloc(4 * strlen(s) + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        o += isprint(*p) ? sprintf(o, "%c", *p) : sprintf(o, "\\x%02x", *p);
    *o = 0;
    return out;
}

/* ---- the descriptor ------------------------------------------------------------ */

#define DESC_SIZE_V1 64 /* abi, name, version, attach, init, code_change, terminate, api */
#define DESC_SIZE_V2 88 /* + state_version (at 64), health, verify */
#define DESC_MAX_STR 256

static int desc_read(const ElfFile *e, CheckModuleDesc *ret, char **why)
{
    Elf64_Sym sym;
    int r = elf_find_symbol(e, "reld_module", &sym, why);
    if (r < 0)
        return r;
    if (sym.st_size < DESC_SIZE_V1) {
        free(*why);
        *why = xasprintf("its reld_module is %llu bytes; a descriptor is %d (ABI 1) or %d (ABI 2)",
                         (unsigned long long)sym.st_size, DESC_SIZE_V1, DESC_SIZE_V2);
        return -EINVAL;
    }
    uint32_t abi;
    if (elf_read_vaddr(e, sym.st_value, &abi, sizeof(abi)) < 0) {
        free(*why);
        *why = xstrdup("its reld_module descriptor lies outside the file");
        return -EINVAL;
    }
    CheckModuleDesc d = {.abi = abi};
    if (abi >= 2) {
        if (sym.st_size < DESC_SIZE_V2) {
            free(*why);
            *why = xasprintf("its reld_module is %llu bytes, an ABI %u descriptor is %d",
                             (unsigned long long)sym.st_size, abi, DESC_SIZE_V2);
            return -EINVAL;
        }
        if (elf_read_vaddr(e, sym.st_value + 64, &d.state_version, sizeof(d.state_version)) < 0) {
            free(*why);
            *why = xstrdup("its reld_module descriptor lies outside the file");
            return -EINVAL;
        }
    }
    static const struct {
        unsigned off;
        const char *what;
    } strs[] = {{8, "name"}, {16, "version"}};
    for (size_t i = 0; i < sizeof(strs) / sizeof(*strs); i++) {
        uint64_t p = 0;
        char *inner = NULL;
        char *s = NULL;
        if (elf_read_pointer(e, sym.st_value + strs[i].off, &p, &inner) < 0) {
            free(*why);
            *why = xasprintf("the %s of its reld_module descriptor %s", strs[i].what, inner ? inner : "cannot be read");
            free(inner);
            check_module_desc_clear(&d);
            return -EINVAL;
        }
        if (p && elf_read_string(e, p, DESC_MAX_STR, &s) < 0) {
            free(*why);
            *why = xasprintf("the %s of its reld_module descriptor points outside the file (0x%llx) or is longer "
                             "than %d bytes",
                             strs[i].what, (unsigned long long)p, DESC_MAX_STR);
            check_module_desc_clear(&d);
            return -EINVAL;
        }
        if (i == 0)
            d.name = s;
        else
            d.version = s;
    }
    *ret = d;
    return 0;
}

int check_module_desc_read(int fd, CheckModuleDesc *ret, char **why)
{
    ElfFile e;
    int r = elf_open(fd, &e, why);
    if (r < 0)
        return r;
    r = desc_read(&e, ret, why);
    elf_close(&e);
    return r;
}

/* ---- the context of one check ------------------------------------------------- */

typedef struct Ctx {
    CheckOptions o;
    const char *root;
    int root_fd;
    CheckReport *rep;
    StrVec sysdirs;   /* where the dynamic loader looks on this system, in order */
    bool have_dirs;   /* sysdirs computed */
    StrVec conf_read; /* ld.so.conf files read (each once) */
    char *cache;      /* /etc/ld.so.cache, or NULL when absent or not in the format read here */
    size_t cache_len;
    bool have_cache; /* cache read (or found missing) */
    StrVec visited;  /* libraries of the release already checked */
} Ctx;

static char *in_sysroot(const Ctx *c, const char *abs)
{
    const char *s = c->o.sysroot;
    if (!s || !*s || strcmp(s, "/") == 0)
        return xstrdup(abs);
    return xasprintf("%s%s", s, abs);
}

static void push_dir(StrVec *v, const char *d)
{
    if (d[0] == '/' && !strvec_contains(v, d))
        strvec_push(v, d);
}

/* /etc/ld.so.conf as ldconfig reads it: a directory per line (a "=TYPE"
 * suffix dropped), "include GLOB" (relative to the file's directory),
 * comments after #. */
static void read_ld_conf(Ctx *c, const char *abs, int depth)
{
    /* Each file once: files that include each other (or a directory of
     * files that each include it) would otherwise multiply. */
    if (depth > MAX_CONF_DEPTH || strvec_contains(&c->conf_read, abs))
        return;
    strvec_push(&c->conf_read, abs);
    char *path = in_sysroot(c, abs), *buf = NULL;
    size_t len;
    int r = store_read_file(path, &buf, &len);
    free(path);
    if (r < 0)
        return; /* no ld.so.conf: the default directories alone, as ld.so */
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        while (*line == ' ' || *line == '\t')
            line++;
        size_t n = strlen(line);
        while (n && isspace((unsigned char)line[n - 1]))
            line[--n] = 0;
        if (!n || strncmp(line, "hwcap ", 6) == 0)
            continue;
        if (strncmp(line, "include", 7) == 0 && (line[7] == ' ' || line[7] == '\t')) {
            char *pat = line + 8;
            while (*pat == ' ' || *pat == '\t')
                pat++;
            char *dir = xstrdup(abs), *slash = strrchr(dir, '/');
            if (slash)
                slash[1] = 0;
            char *full = pat[0] == '/' ? xstrdup(pat) : xasprintf("%s%s", dir, pat);
            char *g = in_sysroot(c, full);
            glob_t gl;
            if (glob(g, 0, NULL, &gl) == 0) {
                size_t skip = strlen(g) - strlen(full);
                for (size_t i = 0; i < gl.gl_pathc; i++)
                    read_ld_conf(c, gl.gl_pathv[i] + skip, depth + 1);
                globfree(&gl);
            }
            free(g);
            free(full);
            free(dir);
            continue;
        }
        char *eq = strchr(line, '=');
        if (eq)
            *eq = 0;
        push_dir(&c->sysdirs, line);
    }
    free(buf);
}

/* The directories ld.so searches after the object's own paths: those of
 * ld.so.conf (which its cache holds), then the defaults of this machine
 * (Debian's multiarch directories first). */
static const StrVec *system_dirs(Ctx *c)
{
    if (c->have_dirs)
        return &c->sysdirs;
    c->have_dirs = true;
    read_ld_conf(c, "/etc/ld.so.conf", 0);
#if defined(__x86_64__)
    static const char *const defaults[] = {
        "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"};
#else
    static const char *const defaults[] = {
        "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"};
#endif
    for (size_t i = 0; i < sizeof(defaults) / sizeof(*defaults); i++)
        push_dir(&c->sysdirs, defaults[i]);
    return &c->sysdirs;
}

static bool system_lib_ok(const Ctx *c, const char *abs);

/* /etc/ld.so.cache in glibc's format since 2.32 ("glibc-ld.so.cache1.1";
 * the older "ld.so-1.7.0" is not read: the directories then stand in):
 * a 48-byte header (nlibs at 20), then nlibs entries of 24 bytes (flags,
 * key, value: offsets of strings from the start of the file). */
#define CACHE_MAGIC     "glibc-ld.so.cache1.1"
#define CACHE_HEADER    48
#define CACHE_ENTRY     24
#define CACHE_ELF_LIBC6 0x0003 /* FLAG_ELF_LIBC6, under FLAG_TYPE_MASK 0x00ff */
#if defined(__x86_64__)
#define CACHE_ARCH 0x0300 /* FLAG_X8664_LIB64 */
#else
#define CACHE_ARCH 0x0a00 /* FLAG_AARCH64_LIB64 */
#endif

static const char *cache_string(const Ctx *c, uint32_t off)
{
    if (off >= c->cache_len || !memchr(c->cache + off, 0, c->cache_len - off))
        return NULL;
    return c->cache + off;
}

/* Is needed in the cache, for this machine, at a path that holds it? */
static bool cache_finds(Ctx *c, const char *needed)
{
    if (!c->have_cache) {
        c->have_cache = true;
        char *path = in_sysroot(c, "/etc/ld.so.cache");
        if (store_read_file(path, &c->cache, &c->cache_len) < 0 || c->cache_len < CACHE_HEADER ||
            memcmp(c->cache, CACHE_MAGIC, strlen(CACHE_MAGIC)) != 0) {
            free(c->cache);
            c->cache = NULL;
        }
        free(path);
    }
    if (!c->cache)
        return false;
    uint32_t n;
    memcpy(&n, c->cache + 20, sizeof(n));
    if (n > (c->cache_len - CACHE_HEADER) / CACHE_ENTRY)
        return false; /* a damaged cache: the directories decide */
    for (uint32_t i = 0; i < n; i++) {
        const char *e = c->cache + CACHE_HEADER + (size_t)i * CACHE_ENTRY;
        int32_t flags;
        uint32_t key, value;
        memcpy(&flags, e, 4);
        memcpy(&key, e + 4, 4);
        memcpy(&value, e + 8, 4);
        if ((flags & 0xff) != CACHE_ELF_LIBC6 || (flags & 0xff00) != CACHE_ARCH)
            continue;
        const char *k = cache_string(c, key), *v = cache_string(c, value);
        if (k && v && v[0] == '/' && strcmp(k, needed) == 0 && system_lib_ok(c, v))
            return true;
    }
    return false;
}

/* A path relative to the root, with "." and ".." resolved lexically;
 * NULL when it climbs above the root. */
static char *normalize(const char *p)
{
    StrVec parts = {0};
    char *copy = xstrdup(p), *save = NULL;
    bool ok = true;
    for (char *s = strtok_r(copy, "/", &save); s && ok; s = strtok_r(NULL, "/", &save)) {
        if (strcmp(s, ".") == 0)
            continue;
        if (strcmp(s, "..") == 0) {
            if (parts.n == 0)
                ok = false;
            else
                free(parts.v[--parts.n]);
            continue;
        }
        strvec_push(&parts, s);
    }
    free(copy);
    char *out = NULL;
    if (ok) {
        size_t len = 1;
        for (size_t i = 0; i < parts.n; i++)
            len += strlen(parts.v[i]) + 1;
        out = xcalloc(1, len);
        for (size_t i = 0; i < parts.n; i++) {
            if (i)
                strcat(out, "/");
            strcat(out, parts.v[i]);
        }
    }
    strvec_clear(&parts);
    return out;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? xstrndup(path, (size_t)(slash - path)) : xstrdup(".");
}

/* Does sysroot+abs exist as an ELF file for this machine? */
static bool system_lib_ok(const Ctx *c, const char *abs)
{
    char *p = in_sysroot(c, abs);
    int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    free(p);
    if (fd < 0)
        return false;
    ElfFile e;
    bool ok = elf_open(fd, &e, NULL) == 0;
    if (ok)
        elf_close(&e);
    close(fd);
    return ok;
}

/* The executable a library is loaded for: its DT_RPATH (NULL when it has
 * DT_RUNPATH, which then applies to its own DT_NEEDED only) and its
 * directory in the release, for $ORIGIN. */
typedef struct Exe {
    const char *rpath, *dir;
} Exe;

static void check_needed(Ctx *c, const char *obj_rel, const ElfFile *e, const Exe *exe, const char *shown,
                         const char *who, int depth);

/* Looks for needed in the release under rel_dir (a path relative to the
 * root). 1 found (and checked in turn), 0 not there. */
static int release_lib(Ctx *c, const char *rel_dir, const char *needed, const Exe *exe, const char *who, int depth)
{
    char *rel = xasprintf("%s/%s", rel_dir, needed), *norm = normalize(rel);
    free(rel);
    if (!norm)
        return 0;
    int fd = store_open_beneath(c->root_fd, norm, O_RDONLY);
    ElfFile e;
    int found = 0;
    if (fd >= 0 && elf_open(fd, &e, NULL) == 0) {
        found = 1;
        if (!strvec_contains(&c->visited, norm)) {
            strvec_push(&c->visited, norm);
            if (depth < MAX_LIB_DEPTH)
                check_needed(c, norm, &e, exe, norm, who, depth + 1);
        }
        elf_close(&e);
    }
    if (fd >= 0)
        close(fd);
    free(norm);
    return found;
}

/* Searches one colon-separated list of directories (DT_RPATH/DT_RUNPATH),
 * $ORIGIN being obj_dir. 1 found, 0 not. */
static int search_path_list(Ctx *c, const char *list, const char *obj_dir, const char *needed, const Exe *exe,
                            const char *who, int depth)
{
    if (!list)
        return 0;
    char *copy = xstrdup(list), *save = NULL;
    int found = 0;
    for (char *d = strtok_r(copy, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
        const char *rest = NULL;
        if (strncmp(d, "$ORIGIN", 7) == 0)
            rest = d + 7;
        else if (strncmp(d, "${ORIGIN}", 9) == 0)
            rest = d + 9;
        if (rest && obj_dir) {
            char *rel = xasprintf("%s%s", obj_dir, rest);
            found = release_lib(c, rel, needed, exe, who, depth);
            free(rel);
        } else if (d[0] == '/') {
            char *p = xasprintf("%s/%s", d, needed);
            found = system_lib_ok(c, p);
            free(p);
        }
    }
    free(copy);
    return found;
}

/* Every DT_NEEDED of e (the object at obj_rel in the release) must resolve
 * as ld.so resolves it: DT_RPATH (of the object, then of the executable)
 * when the object has no DT_RUNPATH, then DT_RUNPATH, then the system. */
static void check_needed(Ctx *c, const char *obj_rel, const ElfFile *e, const Exe *exe, const char *shown,
                         const char *who, int depth)
{
    char *obj_dir = obj_rel ? dir_of(obj_rel) : NULL;
    for (size_t i = 0; i < e->needed.n; i++) {
        const char *n = e->needed.v[i];
        int found = 0;
        if (strchr(n, '/')) {
            if (n[0] == '/')
                found = system_lib_ok(c, n);
            else {
                char *pn = printable(n);
                add(c->rep, CHECK_ERROR, shown, 0, 0,
                    "needs %s by a relative path, which depends on the working directory%s", pn, who);
                free(pn);
                continue;
            }
        } else {
            if (!e->runpath) {
                found = search_path_list(c, e->rpath, obj_dir, n, exe, who, depth);
                /* The executable's DT_RPATH, its $ORIGIN the executable's. */
                if (!found && exe->rpath && exe->rpath != e->rpath)
                    found = search_path_list(c, exe->rpath, exe->dir, n, exe, who, depth);
            }
            if (!found)
                found = search_path_list(c, e->runpath, obj_dir, n, exe, who, depth);
            if (!found)
                found = cache_finds(c, n);
            const StrVec *dirs = system_dirs(c);
            for (size_t k = 0; !found && k < dirs->n; k++) {
                char *p = xasprintf("%s/%s", dirs->v[k], n);
                found = system_lib_ok(c, p);
                free(p);
            }
        }
        if (!found) {
            char *pn = printable(n);
            bool sys = !c->o.sysroot || !*c->o.sysroot || strcmp(c->o.sysroot, "/") == 0;
            add(c->rep, CHECK_ERROR, shown, 0, 0, "needs %s, found neither in the release nor on %s%s%s", pn,
                sys ? "this system" : "the system in ", sys ? "" : c->o.sysroot, who);
            free(pn);
        }
    }
    free(obj_dir);
}

/* ---- executables ----------------------------------------------------------------- */

/* Is abs (on the system) a file that exec can run? NULL when yes, else why. */
static const char *system_runnable(const Ctx *c, const char *abs)
{
    char *p = in_sysroot(c, abs);
    struct stat st;
    int r = stat(p, &st);
    free(p);
    if (r < 0)
        return "does not exist";
    if (!S_ISREG(st.st_mode))
        return "is not a regular file";
    if (!(st.st_mode & 0111))
        return "is not executable";
    return NULL;
}

/* In the directories of the PATH reld starts processes with, by default. */
static bool in_default_path(const Ctx *c, const char *prog)
{
    static const char *const dirs[] = {"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(*dirs); i++) {
        char *p = xasprintf("%s/%s", dirs[i], prog);
        bool ok = system_runnable(c, p) == NULL;
        free(p);
        if (ok)
            return true;
    }
    return false;
}

static void check_script(Ctx *c, const char *head, size_t n, const char *shown, const char *who)
{
    char line[SCRIPT_HEAD + 1];
    memcpy(line, head, n);
    line[n] = 0;
    char *nl = strchr(line, '\n');
    if (nl)
        *nl = 0;
    char *p = line + 2;
    while (*p == ' ' || *p == '\t')
        p++;
    char *end = p + strcspn(p, " \t");
    char *args = *end ? end + 1 : end;
    *end = 0;
    if (!*p) {
        add(c->rep, CHECK_ERROR, shown, 0, 0, "a script (#!) that names no interpreter%s", who);
        return;
    }
    char *interp = printable(p);
    const char *why = p[0] != '/' ? "is not an absolute path" : system_runnable(c, p);
    if (why) {
        add(c->rep, CHECK_ERROR, shown, 0, 0, "its interpreter %s %s%s", interp, why, who);
    } else if (strcmp(strrchr(p, '/') + 1, "env") == 0) {
        /* #!/usr/bin/env prog: env finds prog in the PATH. */
        while (*args == ' ' || *args == '\t')
            args++;
        if (strncmp(args, "-S", 2) == 0)
            for (args += 2; *args == ' ' || *args == '\t';)
                args++;
        args[strcspn(args, " \t")] = 0;
        if (*args && args[0] != '-' && !strchr(args, '=') && !in_default_path(c, args)) {
            char *prog = printable(args);
            add(c->rep, CHECK_WARNING, shown, 0, 0,
                "its interpreter is %s %s, and %s is in none of /usr/local/sbin, /usr/local/bin, /usr/sbin, "
                "/usr/bin, /sbin, /bin%s",
                interp, prog, prog, who);
            free(prog);
        }
    }
    free(interp);
}

/* An ELF executable, open as e, at obj_rel in the release (NULL: on the
 * system). */
static void check_elf_exec(Ctx *c, const ElfFile *e, const char *obj_rel, const char *shown, const char *who)
{
    if (e->type != ET_EXEC && e->type != ET_DYN) {
        add(c->rep, CHECK_ERROR, shown, 0, 0, "an ELF file of type %u, not an executable%s", e->type, who);
        return;
    }
    if (e->interp) {
        const char *why = e->interp[0] == '/' ? system_runnable(c, e->interp) : "is not an absolute path";
        if (why) {
            char *pi = printable(e->interp);
            add(c->rep, CHECK_ERROR, shown, 0, 0, "its program interpreter %s %s%s", pi, why, who);
            free(pi);
            return;
        }
    }
    if (obj_rel) {
        char *dir = dir_of(obj_rel);
        Exe exe = {e->runpath ? NULL : e->rpath, dir};
        check_needed(c, obj_rel, e, &exe, shown, who, 0);
        free(dir);
    }
}

static void check_exec(Ctx *c, const ReleaseAppRef *ref, const ProcessDef *p)
{
    const AppDef *a = ref->app;
    char *who = xasprintf(" (process %s of %s)", p->name, a->name);
    char *obj_rel = NULL, *shown;
    int fd;
    if (p->exec[0] == '/') {
        shown = xstrdup(p->exec);
        char *path = in_sysroot(c, p->exec);
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        fd = fd < 0 ? -errno : fd;
        free(path);
    } else {
        char *unit = store_path_app_dir(NULL, a->name, a->vsn);
        char *joined = xasprintf("%s/%s", unit, p->exec);
        obj_rel = normalize(joined);
        free(joined);
        free(unit);
        shown = xstrdup(obj_rel ? obj_rel : p->exec);
        fd = obj_rel ? store_open_beneath(c->root_fd, obj_rel, O_RDONLY) : -EXDEV;
    }
    c->rep->n_executables++;
    struct stat st;
    char head[SCRIPT_HEAD];
    ssize_t n = 0;
    if (fd < 0) {
        add(c->rep, CHECK_ERROR, shown, 0, 0, "cannot open: %s%s", strerror(-fd), who);
    } else if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        add(c->rep, CHECK_ERROR, shown, 0, 0, "is not a regular file%s", who);
    } else if (!(st.st_mode & 0111)) {
        add(c->rep, CHECK_ERROR, shown, 0, 0, "is not executable (mode %04o)%s", (unsigned)(st.st_mode & 07777), who);
    } else if ((n = pread(fd, head, sizeof(head), 0)) < 0) {
        add(c->rep, CHECK_ERROR, shown, 0, 0, "cannot read: %s%s", strerror(errno), who);
    } else if (n >= 2 && head[0] == '#' && head[1] == '!') {
        check_script(c, head, (size_t)n, shown, who);
    } else if (n >= SELFMAG && memcmp(head, ELFMAG, SELFMAG) == 0) {
        ElfFile e;
        char *why = NULL;
        if (elf_open(fd, &e, &why) < 0) {
            add(c->rep, CHECK_ERROR, shown, 0, 0, "%s%s", why ? why : "a damaged ELF file", who);
        } else {
            check_elf_exec(c, &e, obj_rel, shown, who);
            elf_close(&e);
        }
        free(why);
    } else {
        add(c->rep, CHECK_ERROR, shown, 0, 0, "is neither an ELF executable nor a script (#!)%s", who);
    }
    if (fd >= 0)
        close(fd);
    free(obj_rel);
    free(shown);
    free(who);
}

/* ---- modules ---------------------------------------------------------------------- */

/* SHA-256 of what fd holds, as hex. */
static int hash_fd(int fd, char out[65])
{
    struct sha256_ctx h;
    sha256_init(&h);
    uint8_t buf[65536];
    for (off_t off = 0;;) {
        ssize_t n = pread(fd, buf, sizeof(buf), off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            break;
        sha256_update(&h, (size_t)n, buf);
        off += n;
    }
    uint8_t d[SHA256_DIGEST_SIZE];
    sha256_digest(&h, sizeof(d), d);
    store_hash_hex(d, out);
    return 0;
}

/* Opens module file rel of application a in the root beneath its unit. */
static int open_module(int root_fd, const AppDef *a, const char *rel)
{
    char *unit = store_path_app_dir(NULL, a->name, a->vsn);
    int dirfd = store_open_beneath(root_fd, unit, O_PATH | O_DIRECTORY);
    free(unit);
    if (dirfd < 0)
        return dirfd;
    int fd = store_open_beneath(dirfd, rel, O_RDONLY);
    close(dirfd);
    return fd;
}

static void check_module(Ctx *c, const AppDef *a, const ModuleDef *m)
{
    GROW(c->rep->modules, c->rep->cap_modules, c->rep->n_modules + 1);
    CheckModuleInfo *info = &c->rep->modules[c->rep->n_modules++];
    char *unit = store_path_app_dir(NULL, a->name, a->vsn);
    char *joined = xasprintf("%s/%s", unit, m->file);
    *info = (CheckModuleInfo){
        .app = xstrdup(a->name), .app_vsn = xstrdup(a->vsn), .module = xstrdup(m->name), .file = normalize(joined)};
    free(joined);
    free(unit);
    if (!info->file)
        info->file = xstrdup(m->file);
    int fd = open_module(c->root_fd, a, m->file);
    if (fd < 0) {
        add(c->rep, CHECK_ERROR, m->pos.file, m->pos.line, m->pos.col, "module %s: cannot open %s: %s", m->name,
            m->file, strerror(-fd));
        return;
    }
    (void)hash_fd(fd, info->sha256); /* "" stays when it fails: the descriptor read says why */
    ElfFile e;
    char *why = NULL;
    int r = elf_open(fd, &e, &why);
    if (r == 0) {
        r = desc_read(&e, &info->desc, &why);
        /* What the module needs must load too (dlopen resolves it). */
        char *who = xasprintf(" (module %s of %s)", m->name, a->name);
        /* Loaded by a host whose own paths check does not know: the
         * module's DT_RPATH stands for them. */
        char *dir = dir_of(info->file);
        Exe exe = {e.runpath ? NULL : e.rpath, dir};
        check_needed(c, info->file, &e, &exe, info->file, who, 0);
        free(dir);
        free(who);
        elf_close(&e);
    }
    close(fd);
    if (r < 0) {
        add(c->rep, CHECK_ERROR, m->pos.file, m->pos.line, m->pos.col, "module %s: %s: %s", m->name, m->file,
            why ? why : strerror(-r));
        free(why);
        return;
    }
    free(why);
    info->read = true;
    const CheckModuleDesc *d = &info->desc;
    char *name = printable(d->name), *vsn = printable(d->version);
    /* The runtime loads ABI 2 only (ABI 1 had no context in RelHost). */
    if (d->abi != RELD_MODULE_ABI)
        add(c->rep, CHECK_ERROR, m->pos.file, m->pos.line, m->pos.col,
            "module %s: %s has module ABI %u; reld's runtime loads module ABI %d only: rebuild the module against "
            "this reld-runtime.h",
            m->name, m->file, d->abi, RELD_MODULE_ABI);
    if (!d->name || strcmp(d->name, m->name) != 0)
        add(c->rep, CHECK_ERROR, m->pos.file, m->pos.line, m->pos.col,
            "module %s: %s's descriptor names module '%s' (version %s), not %s: the runtime refuses it", m->name,
            m->file, name, vsn, m->name);
    if (!d->version)
        add(c->rep, CHECK_ERROR, m->pos.file, m->pos.line, m->pos.col,
            "module %s: %s's descriptor has no version: the runtime refuses it", m->name, m->file);
    free(name);
    free(vsn);
}

/* ---- one release ---------------------------------------------------------------- */

static int ctx_open(Ctx *c, const char *root, const CheckOptions *opts, CheckReport *rep)
{
    *c = (Ctx){.root = root, .rep = rep, .root_fd = -1};
    if (opts)
        c->o = *opts;
    c->root_fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (c->root_fd < 0) {
        int r = -errno;
        add(rep, CHECK_ERROR, root, 0, 0, "cannot open the release root: %s", strerror(-r));
        return r;
    }
    return 0;
}

static void ctx_close(Ctx *c)
{
    if (c->root_fd >= 0)
        close(c->root_fd);
    strvec_clear(&c->sysdirs);
    strvec_clear(&c->conf_read);
    strvec_clear(&c->visited);
    free(c->cache);
}

/* Loads release vsn of c's root (its errors are findings) and checks it. */
static int release_checked(Ctx *c, const char *vsn, ReleaseDef **ret)
{
    Diag d = {0};
    ReleaseDef *rel = NULL;
    char *relfile = store_path_release_file(NULL, vsn);
    int r = store_load_release(c->root, vsn, &rel, &d);
    add_diag(c->rep, &d, relfile);
    diag_clear(&d);
    free(relfile);
    if (r < 0)
        return r;
    modules_clear(c->rep);
    for (size_t i = 0; i < rel->n_apps; i++) {
        const AppDef *a = rel->apps[i].app;
        for (size_t m = 0; m < a->n_modules; m++)
            check_module(c, a, &a->modules[m]);
        for (size_t p = 0; p < a->n_processes; p++)
            check_exec(c, &rel->apps[i], &a->processes[p]);
    }
    *ret = rel;
    return 0;
}

static int result(const CheckReport *rep, size_t errors_before, int r)
{
    if (r < 0)
        return r;
    return rep->n_errors > errors_before ? -EINVAL : 0;
}

int check_release(const char *root, const char *vsn, const CheckOptions *opts, CheckReport *rep)
{
    size_t before = rep->n_errors;
    Ctx c;
    int r = ctx_open(&c, root, opts, rep);
    ReleaseDef *rel = NULL;
    if (r == 0)
        r = release_checked(&c, vsn, &rel);
    release_def_free(rel);
    ctx_close(&c);
    return result(rep, before, r);
}

int check_release_diag(const char *root, const char *vsn, Diag *diag)
{
    CheckReport rep = {0};
    int r = check_release(root, vsn, NULL, &rep);
    for (size_t i = 0; i < rep.n; i++) {
        const CheckFinding *f = &rep.v[i];
        char *line = f->line > 0 ? xasprintf("%s:%d:%d: %s", f->file, f->line, f->col, f->message)
                                 : xasprintf("%s: %s", f->file, f->message);
        strvec_push_take(f->severity == CHECK_ERROR ? &diag->errors : &diag->warnings, line);
    }
    check_report_clear(&rep);
    return r;
}

/* ---- between two releases --------------------------------------------------------- */

typedef struct Pair {
    Ctx *old, *new;
} Pair;

/* The hash of module of app in c's root; "" when it cannot be read. */
static void module_hash(const Ctx *c, const AppDef *a, const char *module, char out[65])
{
    out[0] = 0;
    const ModuleDef *m = appdefs_app_find_module(a, module);
    int fd = m ? open_module(c->root_fd, a, m->file) : -ENOENT;
    if (fd >= 0) {
        if (hash_fd(fd, out) < 0)
            out[0] = 0;
        close(fd);
    }
}

/* RelupModuleChangedFn across two roots. */
static int pair_module_changed(void *userdata, const AppDef *old_app, const AppDef *new_app, const char *module)
{
    const Pair *p = userdata;
    char a[65], b[65];
    module_hash(p->old, old_app, module, a);
    module_hash(p->new, new_app, module, b);
    if (!a[0] || !b[0])
        return a[0] || b[0] ? 1 : -EIO;
    return strcmp(a, b) != 0;
}

static bool entry_reaches(const AppupEntry *e, const AppDef *a, const char *module)
{
    for (size_t i = 0; i < e->n_instrs; i++) {
        const AppupInstr *in = &e->instrs[i];
        switch (in->op) {
        case APPUP_UPDATE:
        case APPUP_LOAD_MODULE:
        case APPUP_ADD_MODULE:
            if (strcmp(in->target, module) == 0)
                return true;
            break;
        case APPUP_RESTART:
            if (strvec_contains(&in->modules, module))
                return true;
            break;
        case APPUP_RESTART_APPLICATION:
            if (strcmp(in->target, a->name) == 0)
                return true;
            break;
        case APPUP_DELETE_MODULE:
        case APPUP_ADD_APPLICATION:
        case APPUP_REMOVE_APPLICATION:
            break;
        }
    }
    return false;
}

/* The descriptor of module of a in c's root, or false. */
static bool module_desc(const Ctx *c, const AppDef *a, const char *module, CheckModuleDesc *ret)
{
    const ModuleDef *m = appdefs_app_find_module(a, module);
    int fd = m ? open_module(c->root_fd, a, m->file) : -ENOENT;
    if (fd < 0)
        return false;
    char *why = NULL;
    bool ok = check_module_desc_read(fd, ret, &why) == 0;
    free(why);
    close(fd);
    return ok;
}

static void check_entry(Pair *p, const AppDef *oa, const AppDef *na, const AppupEntry *e, const char *dir,
                        const StrVec *changed)
{
    CheckSeverity sev = p->new->o.strict ? CHECK_ERROR : CHECK_WARNING;
    const char *prep = strcmp(dir, "up") == 0 ? "from" : "to";
    for (size_t k = 0; k < changed->n; k++)
        if (!entry_reaches(e, na, changed->v[k]))
            add(p->new->rep, sev, e->pos.file ? e->pos.file : na->file, e->pos.line, e->pos.col,
                "module %s changed from %s %s to %s but no instruction of the appup entry %s %s %s loads it "
                "(update, load_module, restart, restart_application): the old code would keep running",
                changed->v[k], na->name, oa->vsn, na->vsn, dir, prep, oa->vsn);
    for (size_t i = 0; i < e->n_instrs; i++) {
        const AppupInstr *in = &e->instrs[i];
        if (in->op != APPUP_LOAD_MODULE || !strvec_contains(changed, in->target))
            continue;
        CheckModuleDesc od = {0}, nd = {0};
        if (module_desc(p->old, oa, in->target, &od) && module_desc(p->new, na, in->target, &nd) && od.state_version &&
            nd.state_version && od.state_version != nd.state_version)
            add(p->new->rep, sev, in->pos.file ? in->pos.file : na->file, in->pos.line, in->pos.col,
                "load_module %s: its state layout changes (state_version %u in %s %s, %u in %s) but load_module "
                "runs no code_change; use update",
                in->target, od.state_version, na->name, oa->vsn, nd.state_version, na->vsn);
        check_module_desc_clear(&od);
        check_module_desc_clear(&nd);
    }
}

/* The content of lib/<app>-<vsn> in c's root; false when it cannot be read. */
static bool app_hash(const Ctx *c, const AppDef *a, unsigned char out[STORE_HASH_SIZE])
{
    char *unit = store_path_app_dir(NULL, a->name, a->vsn);
    int fd = store_open_beneath(c->root_fd, unit, O_RDONLY | O_DIRECTORY);
    free(unit);
    bool ok = fd >= 0 && store_hash_tree(fd, out) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static void check_pair(Pair *p, const ReleaseDef *old, const ReleaseDef *new)
{
    CheckReport *rep = p->new->rep;
    for (size_t i = 0; i < new->n_apps; i++) {
        const ReleaseAppRef *nr = &new->apps[i], *orf = appdefs_release_find(old, nr->name);
        if (!orf)
            continue; /* added: nothing to cover */
        const AppDef *na = nr->app, *oa = orf->app;
        if (strcmp(na->vsn, oa->vsn) == 0) {
            unsigned char a[STORE_HASH_SIZE], b[STORE_HASH_SIZE];
            if (app_hash(p->old, oa, a) && app_hash(p->new, na, b) && memcmp(a, b, sizeof(a)) != 0)
                add(rep, CHECK_ERROR, nr->pos.file, nr->pos.line, nr->pos.col,
                    "application %s %s differs between release %s and %s but keeps its version: no relup loads "
                    "what changed, and reld refuses it beside the other; give it a new version",
                    na->name, na->vsn, old->vsn, new->vsn);
            continue;
        }
        StrVec changed = {0};
        for (size_t m = 0; m < na->n_modules; m++) {
            const char *mod = na->modules[m].name;
            if (!appdefs_app_find_module(oa, mod))
                continue; /* added: add_module, or derived */
            char h1[65], h2[65];
            module_hash(p->old, oa, mod, h1);
            module_hash(p->new, na, mod, h2);
            if (h1[0] && h2[0] && strcmp(h1, h2) != 0)
                strvec_push(&changed, mod);
        }
        /* A missing entry is the relup's to report (derived, or an error). */
        const AppupEntry *up = appdefs_appup_find(&na->up, oa->vsn), *down = appdefs_appup_find(&na->down, oa->vsn);
        if (up)
            check_entry(p, oa, na, up, "up", &changed);
        if (down)
            check_entry(p, oa, na, down, "down", &changed);
        strvec_clear(&changed);
    }
    Relup *r = NULL;
    Diag d = {0};
    RelupOptions ro = {.derive_missing = !p->new->o.strict, .module_changed = pair_module_changed, .userdata = p};
    char *relfile = store_path_release_file(NULL, new->vsn);
    (void)relup_compute(old, new, &ro, &r, &d); /* its errors are findings */
    add_diag(rep, &d, relfile);
    free(relfile);
    diag_clear(&d);
    relup_free(r);
}

int check_upgrade(const char *old_root, const char *old_vsn, const char *new_root, const char *new_vsn,
                  const CheckOptions *opts, CheckReport *rep)
{
    size_t before = rep->n_errors;
    Ctx oc, nc;
    int r = ctx_open(&nc, new_root, opts, rep), ro = ctx_open(&oc, old_root, opts, rep);
    ReleaseDef *old = NULL, *new = NULL;
    if (r == 0)
        r = release_checked(&nc, new_vsn, &new);
    if (ro == 0) {
        /* The old release as reld has it: loaded, not checked again. */
        Diag d = {0};
        char *relfile = store_path_release_file(NULL, old_vsn);
        ro = store_load_release(old_root, old_vsn, &old, &d);
        size_t first = rep->n;
        add_diag(rep, &d, relfile);
        for (size_t i = first; i < rep->n; i++)
            rep->v[i].old = true;
        free(relfile);
        diag_clear(&d);
    }
    if (r == 0 && ro == 0) {
        Pair p = {&oc, &nc};
        check_pair(&p, old, new);
    }
    release_def_free(old);
    release_def_free(new);
    ctx_close(&oc);
    ctx_close(&nc);
    return result(rep, before, r < 0 ? r : ro);
}
