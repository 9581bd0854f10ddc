/* check's ELF reader (check-elf.h): pread only, every offset and size
 * checked against the file before it is used. */
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check-elf.h"
#include "check.h"

/* Bounds on what a hostile file can make us do; real files are far below. */
#define MAX_PHDRS    4096
#define MAX_DYNAMIC  65536   /* entries of PT_DYNAMIC */
#define MAX_NEEDED   1024    /* DT_NEEDED entries */
#define MAX_CHAIN    1000000 /* steps of a hash chain */
#define MAX_DYN_NAME 4096    /* bytes of a DT_NEEDED or DT_RUNPATH string */

/* The relocation types that give a pointer its value, per machine. */
static const struct {
    unsigned machine;
    uint32_t relative, abs64;
} reloc_types[] = {
    {EM_X86_64, R_X86_64_RELATIVE, R_X86_64_64},
    {EM_AARCH64, R_AARCH64_RELATIVE, R_AARCH64_ABS64},
};

static const struct {
    unsigned machine;
    const char *name;
} machine_names[] = {
    {EM_X86_64, "x86-64"},   {EM_AARCH64, "aarch64"},     {EM_386, "i386"},
    {EM_ARM, "arm"},         {EM_RISCV, "riscv"},         {EM_PPC64, "ppc64"},
    {EM_PPC, "powerpc"},     {EM_S390, "s390x"},          {EM_MIPS, "mips"},
    {EM_SPARCV9, "sparc64"}, {EM_LOONGARCH, "loongarch"},
};

char *check_machine_name(unsigned machine)
{
    for (size_t i = 0; i < sizeof(machine_names) / sizeof(*machine_names); i++)
        if (machine_names[i].machine == machine)
            return xstrdup(machine_names[i].name);
    return xasprintf("machine %u", machine);
}

unsigned check_host_machine(void)
{
#if defined(__x86_64__)
    return EM_X86_64;
#elif defined(__aarch64__)
    return EM_AARCH64;
#else
#error "check: the host machine's ELF e_machine is not known for this architecture"
#endif
}

static void say(char **why, const char *fmt, ...) UTIL_PRINTF(2, 3);
static void say(char **why, const char *fmt, ...)
{
    if (!why)
        return;
    va_list ap;
    va_start(ap, fmt);
    free(*why);
    *why = xvasprintf(fmt, ap);
    va_end(ap);
}

/* Reads exactly n bytes at off, or -ENOEXEC when they are not all in the
 * file (a truncated file reads short). */
static int read_at(const ElfFile *e, uint64_t off, void *buf, size_t n)
{
    if (off > e->size || n > e->size - off)
        return -ENOEXEC;
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(e->fd, (char *)buf + done, n - done, (off_t)(off + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return -ENOEXEC;
        done += (size_t)r;
    }
    return 0;
}

/* The file offset of [vaddr, vaddr + n) when one PT_LOAD holds all of it
 * in its file image. */
static int vaddr_to_off(const ElfFile *e, uint64_t vaddr, uint64_t n, uint64_t *ret)
{
    for (size_t i = 0; i < e->n_ph; i++) {
        const Elf64_Phdr *p = &e->ph[i];
        if (p->p_type != PT_LOAD || vaddr < p->p_vaddr)
            continue;
        uint64_t d = vaddr - p->p_vaddr;
        if (d > p->p_filesz || n > p->p_filesz - d)
            continue;
        if (p->p_offset > e->size || d > e->size - p->p_offset)
            return -ENOEXEC;
        *ret = p->p_offset + d;
        return 0;
    }
    return -ERANGE;
}

int elf_read_vaddr(const ElfFile *e, uint64_t vaddr, void *buf, size_t n)
{
    uint64_t off;
    int r = vaddr_to_off(e, vaddr, n, &off);
    return r < 0 ? r : read_at(e, off, buf, n);
}

/* A NUL-terminated string of at most max bytes at off, within limit bytes
 * from off (the end of its table or segment). */
static int read_string_at(const ElfFile *e, uint64_t off, uint64_t limit, size_t max, char **ret)
{
    if (off >= e->size)
        return -ERANGE;
    size_t n = max + 1;
    if (n > limit)
        n = (size_t)limit;
    if (n > e->size - off)
        n = (size_t)(e->size - off);
    char *buf = xmalloc(n + 1);
    int r = read_at(e, off, buf, n);
    char *nul = r == 0 ? memchr(buf, 0, n) : NULL;
    if (!nul) {
        free(buf);
        return r < 0 && r != -ENOEXEC ? r : -ERANGE;
    }
    *ret = buf;
    return 0;
}

int elf_read_string(const ElfFile *e, uint64_t vaddr, size_t max, char **ret)
{
    for (size_t i = 0; i < e->n_ph; i++) {
        const Elf64_Phdr *p = &e->ph[i];
        if (p->p_type != PT_LOAD || vaddr < p->p_vaddr || vaddr - p->p_vaddr >= p->p_filesz)
            continue;
        uint64_t d = vaddr - p->p_vaddr;
        if (p->p_offset > e->size || d > e->size - p->p_offset)
            return -ERANGE;
        return read_string_at(e, p->p_offset + d, p->p_filesz - d, max, ret);
    }
    return -ERANGE;
}

/* A string of the dynamic string table. */
static int dynstr(const ElfFile *e, uint64_t idx, char **ret)
{
    if (!e->strtab || idx >= e->strsz)
        return -ERANGE;
    uint64_t off;
    int r = vaddr_to_off(e, e->strtab, e->strsz, &off);
    if (r < 0)
        return r;
    return read_string_at(e, off + idx, e->strsz - idx, MAX_DYN_NAME, ret);
}

static int read_dynamic(ElfFile *e, const Elf64_Phdr *p, char **why)
{
    uint64_t n = p->p_filesz / sizeof(Elf64_Dyn);
    if (n > MAX_DYNAMIC)
        n = MAX_DYNAMIC;
    Elf64_Dyn *d = xcalloc(n ? n : 1, sizeof(*d));
    int r = read_at(e, p->p_offset, d, n * sizeof(*d));
    if (r < 0) {
        free(d);
        say(why, "its dynamic section lies outside the file");
        return r;
    }
    uint64_t runpath = UINT64_MAX, rpath = UINT64_MAX, *needed = xcalloc(MAX_NEEDED, sizeof(*needed));
    size_t n_needed = 0;
    e->has_dynamic = true;
    for (uint64_t i = 0; i < n && d[i].d_tag != DT_NULL; i++) {
        uint64_t v = d[i].d_un.d_val;
        switch (d[i].d_tag) {
        case DT_STRTAB:
            e->strtab = v;
            break;
        case DT_STRSZ:
            e->strsz = v;
            break;
        case DT_SYMTAB:
            e->symtab = v;
            break;
        case DT_GNU_HASH:
            e->gnu_hash = v;
            break;
        case DT_HASH:
            e->sysv_hash = v;
            break;
        case DT_RELA:
            e->rela = v;
            break;
        case DT_RELASZ:
            e->relasz = v;
            break;
        case DT_NEEDED:
            if (n_needed < MAX_NEEDED)
                needed[n_needed++] = v;
            break;
        case DT_RUNPATH:
            runpath = v;
            break;
        case DT_RPATH:
            rpath = v;
            break;
        default:
            break;
        }
    }
    free(d);
    /* Strings once the string table is known (it may come after them). */
    for (size_t i = 0; r == 0 && i < n_needed; i++) {
        char *s = NULL;
        if ((r = dynstr(e, needed[i], &s)) < 0)
            say(why, "DT_NEEDED entry %zu is not a string inside the file", i + 1);
        else
            strvec_push_take(&e->needed, s);
    }
    free(needed);
    if (r == 0 && runpath != UINT64_MAX && (r = dynstr(e, runpath, &e->runpath)) < 0)
        say(why, "DT_RUNPATH is not a string inside the file");
    if (r == 0 && rpath != UINT64_MAX && (r = dynstr(e, rpath, &e->rpath)) < 0)
        say(why, "DT_RPATH is not a string inside the file");
    return r < 0 ? -ENOEXEC : 0;
}

void elf_close(ElfFile *e)
{
    free(e->ph);
    strvec_clear(&e->needed);
    free(e->runpath);
    free(e->rpath);
    free(e->interp);
    *e = (ElfFile){.fd = -1};
}

int elf_open(int fd, ElfFile *e, char **why)
{
    *e = (ElfFile){.fd = fd};
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    e->size = (uint64_t)st.st_size;
    unsigned char ident[EI_NIDENT];
    if (read_at(e, 0, ident, sizeof(ident)) < 0 || memcmp(ident, ELFMAG, SELFMAG) != 0) {
        say(why, "not an ELF file");
        return -ENOEXEC;
    }
    e->cls = ident[EI_CLASS];
    e->data = ident[EI_DATA];
    if ((e->cls != ELFCLASS32 && e->cls != ELFCLASS64) || (e->data != ELFDATA2LSB && e->data != ELFDATA2MSB)) {
        say(why, "an ELF file of unknown class %u or byte order %u", e->cls, e->data);
        return -ENOEXEC;
    }
    /* e_type and e_machine sit at the same offsets in both classes. */
    unsigned char tm[4];
    if (read_at(e, 16, tm, sizeof(tm)) < 0) {
        say(why, "a truncated ELF file (%llu bytes)", (unsigned long long)e->size);
        return -ENOEXEC;
    }
    bool lsb = e->data == ELFDATA2LSB;
    e->type = lsb ? (uint16_t)(tm[0] | tm[1] << 8) : (uint16_t)(tm[1] | tm[0] << 8);
    e->machine = lsb ? (uint16_t)(tm[2] | tm[3] << 8) : (uint16_t)(tm[3] | tm[2] << 8);
    bool host_lsb = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
    unsigned host = check_host_machine();
    if (e->machine != host || e->cls != ELFCLASS64 || lsb != host_lsb) {
        char *m = check_machine_name(e->machine), *h = check_machine_name(host);
        say(why, "built for %s%s%s, this machine is %s", m, e->cls == ELFCLASS32 ? " (32-bit)" : "",
            lsb != host_lsb ? (lsb ? " (little-endian)" : " (big-endian)") : "", h);
        free(m);
        free(h);
        return -EXDEV;
    }
    Elf64_Ehdr eh;
    if (read_at(e, 0, &eh, sizeof(eh)) < 0) {
        say(why, "a truncated ELF file (%llu bytes)", (unsigned long long)e->size);
        return -ENOEXEC;
    }
    if (eh.e_phnum > MAX_PHDRS || (eh.e_phnum && eh.e_phentsize != sizeof(Elf64_Phdr))) {
        say(why, "a damaged ELF file: %u program headers of %u bytes", eh.e_phnum, eh.e_phentsize);
        return -ENOEXEC;
    }
    e->n_ph = eh.e_phnum;
    e->ph = xcalloc(e->n_ph ? e->n_ph : 1, sizeof(*e->ph));
    if (read_at(e, eh.e_phoff, e->ph, e->n_ph * sizeof(*e->ph)) < 0) {
        say(why, "a truncated ELF file: its program headers lie outside its %llu bytes", (unsigned long long)e->size);
        elf_close(e);
        return -ENOEXEC;
    }
    int r = 0;
    for (size_t i = 0; r == 0 && i < e->n_ph; i++) {
        const Elf64_Phdr *p = &e->ph[i];
        if (p->p_type == PT_DYNAMIC && !e->has_dynamic)
            r = read_dynamic(e, p, why);
        else if (p->p_type == PT_INTERP && !e->interp &&
                 read_string_at(e, p->p_offset, p->p_filesz, MAX_DYN_NAME, &e->interp) < 0) {
            say(why, "its program interpreter (PT_INTERP) is not a string inside the file");
            r = -ENOEXEC;
        }
    }
    if (r < 0)
        elf_close(e);
    return r;
}

/* The symbol at index i of the dynamic symbol table; its name compared
 * with name. */
static int symbol_at(const ElfFile *e, uint64_t i, const char *name, Elf64_Sym *sym, bool *match)
{
    if (i > UINT64_MAX / sizeof(*sym) || e->symtab > UINT64_MAX - i * sizeof(*sym))
        return -ENOEXEC;
    int r = elf_read_vaddr(e, e->symtab + i * sizeof(*sym), sym, sizeof(*sym));
    if (r < 0)
        return r == -ERANGE ? -ENOEXEC : r;
    char *s = NULL;
    *match = dynstr(e, sym->st_name, &s) == 0 && strcmp(s, name) == 0;
    free(s);
    return 0;
}

static uint32_t gnu_hash(const char *s)
{
    uint32_t h = 5381;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        h = h * 33 + *p;
    return h;
}

static uint32_t sysv_hash(const char *s)
{
    uint32_t h = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        h = (h << 4) + *p;
        uint32_t g = h & 0xf0000000U;
        if (g)
            h ^= g >> 24;
        h &= ~g;
    }
    return h;
}

/* The lookup as ld.so does it: DT_GNU_HASH (buckets, then a chain whose
 * last entry has its low bit set), else DT_HASH. */
static int lookup(const ElfFile *e, const char *name, Elf64_Sym *ret)
{
    Elf64_Sym sym;
    bool match = false;
    int r;
    if (e->gnu_hash) {
        uint32_t hdr[4]; /* nbuckets, symoffset, bloom size (words), bloom shift */
        if (elf_read_vaddr(e, e->gnu_hash, hdr, sizeof(hdr)) < 0)
            return -ENOEXEC;
        if (hdr[0] == 0)
            return -ENOENT;
        uint32_t h = gnu_hash(name), bucket;
        uint64_t buckets = e->gnu_hash + 16 + (uint64_t)hdr[2] * 8;
        uint64_t chains = buckets + (uint64_t)hdr[0] * 4;
        if (elf_read_vaddr(e, buckets + (uint64_t)(h % hdr[0]) * 4, &bucket, 4) < 0)
            return -ENOEXEC;
        if (bucket == 0)
            return -ENOENT;
        if (bucket < hdr[1])
            return -ENOEXEC;
        for (uint64_t i = bucket, steps = 0; steps < MAX_CHAIN; i++, steps++) {
            uint32_t h2;
            if (elf_read_vaddr(e, chains + (i - hdr[1]) * 4, &h2, 4) < 0)
                return -ENOEXEC;
            if ((h | 1) == (h2 | 1)) {
                if ((r = symbol_at(e, i, name, &sym, &match)) < 0)
                    return r;
                if (match) {
                    *ret = sym;
                    return 0;
                }
            }
            if (h2 & 1)
                return -ENOENT;
        }
        return -ENOEXEC;
    }
    if (e->sysv_hash) {
        uint32_t hdr[2]; /* nbucket, nchain */
        if (elf_read_vaddr(e, e->sysv_hash, hdr, sizeof(hdr)) < 0)
            return -ENOEXEC;
        if (hdr[0] == 0)
            return -ENOENT;
        uint64_t buckets = e->sysv_hash + 8, chains = buckets + (uint64_t)hdr[0] * 4;
        uint32_t i;
        if (elf_read_vaddr(e, buckets + (uint64_t)(sysv_hash(name) % hdr[0]) * 4, &i, 4) < 0)
            return -ENOEXEC;
        for (uint32_t steps = 0; i != STN_UNDEF; steps++) {
            if (steps > hdr[1] || i >= hdr[1])
                return -ENOEXEC;
            if ((r = symbol_at(e, i, name, &sym, &match)) < 0)
                return r;
            if (match) {
                *ret = sym;
                return 0;
            }
            if (elf_read_vaddr(e, chains + (uint64_t)i * 4, &i, 4) < 0)
                return -ENOEXEC;
        }
        return -ENOENT;
    }
    return -ENOENT;
}

int elf_find_symbol(const ElfFile *e, const char *name, Elf64_Sym *ret, char **why)
{
    if (!e->has_dynamic || !e->symtab || !e->strtab) {
        say(why, "has no dynamic symbol table");
        return -ENOENT;
    }
    Elf64_Sym sym;
    int r = lookup(e, name, &sym);
    if (r == -ENOEXEC)
        say(why, "a damaged dynamic symbol table (its hash table or symbols lie outside the file)");
    else if (r == -ENOENT || (r == 0 && sym.st_shndx == SHN_UNDEF))
        say(why, "exports no %s symbol", name);
    if (r < 0)
        return r;
    if (sym.st_shndx == SHN_UNDEF)
        return -ENOENT;
    *ret = sym;
    return 0;
}

int elf_read_pointer(const ElfFile *e, uint64_t vaddr, uint64_t *ret, char **why)
{
    uint32_t relative = 0, abs64 = 0;
    for (size_t i = 0; i < sizeof(reloc_types) / sizeof(*reloc_types); i++)
        if (reloc_types[i].machine == e->machine) {
            relative = reloc_types[i].relative;
            abs64 = reloc_types[i].abs64;
        }
    /* A relocation for vaddr in .rela.dyn gives the value. */
    if (e->rela && e->relasz) {
        uint64_t off;
        if (vaddr_to_off(e, e->rela, e->relasz, &off) < 0) {
            say(why, "its relocations (DT_RELA) lie outside the file");
            return -ENOEXEC;
        }
        Elf64_Rela chunk[512] = {{0}}; /* read_at fills what the loop reads; the analyzer cannot tell */
        uint64_t total = e->relasz / sizeof(Elf64_Rela);
        for (uint64_t i = 0; i < total;) {
            size_t n = total - i < 512 ? (size_t)(total - i) : 512;
            if (read_at(e, off + i * sizeof(Elf64_Rela), chunk, n * sizeof(Elf64_Rela)) < 0) {
                say(why, "its relocations (DT_RELA) lie outside the file");
                return -ENOEXEC;
            }
            for (size_t k = 0; k < n; k++) {
                if (chunk[k].r_offset != vaddr)
                    continue;
                uint32_t type = (uint32_t)ELF64_R_TYPE(chunk[k].r_info);
                if (type == relative && relative) {
                    *ret = (uint64_t)chunk[k].r_addend;
                    return 0;
                }
                if (type == abs64 && abs64) {
                    Elf64_Sym sym;
                    bool match;
                    if (symbol_at(e, ELF64_R_SYM(chunk[k].r_info), "", &sym, &match) < 0) {
                        say(why, "a relocation names a symbol outside the file");
                        return -ENOEXEC;
                    }
                    if (sym.st_shndx == SHN_UNDEF) {
                        say(why, "points into another object (an undefined symbol)");
                        return -EINVAL;
                    }
                    *ret = sym.st_value + (uint64_t)chunk[k].r_addend;
                    return 0;
                }
                say(why, "is filled by a relocation of type %u, which check does not follow", type);
                return -EINVAL;
            }
            i += n;
        }
    }
    /* Else the value in place: an absolute address (ET_EXEC), or what a
     * DT_RELR relocation adds the load address to. */
    if (elf_read_vaddr(e, vaddr, ret, sizeof(*ret)) < 0) {
        say(why, "lies outside the file");
        return -EINVAL;
    }
    return 0;
}
