#pragma once
/* check's ELF reader (private to check/): an ELF file read with pread
 * only, every read bounded by the file's size, so that a truncated or
 * hostile file gives an error and never a crash or a read outside it.
 * Only what check needs: the header, program headers, the dynamic section
 * (DT_NEEDED, DT_RUNPATH, DT_RPATH), the program interpreter, and the
 * lookup of one dynamic symbol with the relocations of its pointers. */
#include <elf.h>
#include <stdbool.h>
#include <stdint.h>

#include "util.h"

typedef struct ElfFile {
    int fd; /* borrowed */
    uint64_t size;
    unsigned char cls, data; /* e_ident[EI_CLASS], e_ident[EI_DATA] */
    uint16_t type, machine;
    Elf64_Phdr *ph; /* program headers (64-bit native files only) */
    size_t n_ph;
    /* From PT_DYNAMIC (0 when absent). */
    bool has_dynamic;
    uint64_t strtab, strsz, symtab, gnu_hash, sysv_hash, rela, relasz;
    StrVec needed;         /* DT_NEEDED, in order */
    char *runpath, *rpath; /* NULL when absent */
    char *interp;          /* PT_INTERP, NULL when absent */
} ElfFile;

/* Reads the header of fd. Returns 0; -ENOEXEC when it is not an ELF file
 * or is damaged (*why says how); -EXDEV when it is an ELF file for another
 * machine, class or byte order (*why: "built for aarch64, this machine is
 * x86-64"). Only a file for this machine has its program headers and
 * dynamic section read. On failure e holds nothing to free. */
int elf_open(int fd, ElfFile *e, char **why);
void elf_close(ElfFile *e);

/* Finds the defined dynamic symbol name. Returns 0 and *ret, -ENOENT, or
 * -ENOEXEC (a damaged table; *why). */
int elf_find_symbol(const ElfFile *e, const char *name, Elf64_Sym *ret, char **why);

/* The 64-bit pointer stored at vaddr once relocated (0 when null). */
int elf_read_pointer(const ElfFile *e, uint64_t vaddr, uint64_t *ret, char **why);

/* Reads n bytes at vaddr (inside a PT_LOAD's file image). */
int elf_read_vaddr(const ElfFile *e, uint64_t vaddr, void *buf, size_t n);

/* The NUL-terminated string at vaddr, at most max bytes. -ERANGE when it
 * is not inside the file or longer. */
int elf_read_string(const ElfFile *e, uint64_t vaddr, size_t max, char **ret);
