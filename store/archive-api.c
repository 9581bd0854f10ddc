/* libarchive on demand (archive-api.h). */
#include "archive-api.h"

#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "util.h"

/* Each function by name, at its offset in ArchiveApi: one table, one loop. */
#define SYM(field, name)                                                                                               \
    {                                                                                                                  \
#name, offsetof(ArchiveApi, field)                                                                             \
    }
static const struct {
    const char *name;
    size_t offset;
} symbols[] = {
    SYM(read_new, archive_read_new),
    SYM(read_support_filter_all, archive_read_support_filter_all),
    SYM(read_support_format_all, archive_read_support_format_all),
    SYM(read_open_fd, archive_read_open_fd),
    SYM(read_next_header, archive_read_next_header),
    SYM(read_data_block, archive_read_data_block),
    SYM(read_free, archive_read_free),
    SYM(error_string, archive_error_string),
    SYM(entry_pathname, archive_entry_pathname),
    SYM(entry_mode, archive_entry_mode),
    SYM(entry_filetype, archive_entry_filetype),
    SYM(entry_hardlink, archive_entry_hardlink),
    SYM(entry_symlink, archive_entry_symlink),
    SYM(entry_size, archive_entry_size),
    SYM(entry_size_is_set, archive_entry_size_is_set),
};

int archive_api_open(ArchiveApi *ret, char **why)
{
    *ret = (ArchiveApi){0};
    void *h = dlopen(ARCHIVE_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        *why = xasprintf("cannot load %s (libarchive, for unpacking): %s", ARCHIVE_SONAME, e ? e : "unknown error");
        return -ELIBACC;
    }
    for (size_t i = 0; i < sizeof(symbols) / sizeof(symbols[0]); i++) {
        void *f = dlsym(h, symbols[i].name);
        if (!f) {
            *why = xasprintf("%s has no %s: not the libarchive reld was built for", ARCHIVE_SONAME, symbols[i].name);
            (void)dlclose(h); /* nothing of it was used */
            return -ELIBACC;
        }
        /* A data pointer to a function pointer: what dlsym() is for
         * (POSIX guarantees the conversion). */
        memcpy((char *)ret + symbols[i].offset, &f, sizeof(f));
    }
    ret->handle = h;
    return 0;
}

void archive_api_close(ArchiveApi *api)
{
#if defined(__has_feature)
#if __has_feature(address_sanitizer) && !defined(__SANITIZE_ADDRESS__)
#define __SANITIZE_ADDRESS__ 1 /* clang's way of saying it */
#endif
#endif
#if !defined(__SANITIZE_ADDRESS__)
    /* Unloaded, so that idle reld does not keep its pages. Under ASan it
     * stays: what libxml2 and ICU allocate at their initialisation would
     * count as leaked once their globals are unmapped. */
    if (api->handle)
        (void)dlclose(api->handle); /* fails only for a handle it never gave */
#endif
    *api = (ArchiveApi){0};
}
