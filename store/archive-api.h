#pragma once
/* libarchive, loaded when an unpack needs it and unloaded after, not linked
 * into reld: with the libraries it pulls in on Debian (libxml2, ICU,
 * libstdc++), it was 1.7 MiB of reld's resident memory at idle, for an
 * operation that runs for seconds a few times a day. The way systemd loads
 * its optional libraries (dlopen on first use).
 *
 * Ownership: an ArchiveApi holds one reference to the library from
 * archive_api_open() to archive_api_close(); the functions are valid in
 * between. Concurrent unpacks each hold their own.
 *
 * Errors: archive_api_open() returns 0, or -ELIBACC with *why (caller
 * frees) naming the library and dlerror()'s reason. */
#include <archive.h>
#include <archive_entry.h>

/* The library reld was built against, by its soname (libarchive13 on
 * Debian 12); -Darchive_soname=... at configure time for another. */
#ifndef ARCHIVE_SONAME
#define ARCHIVE_SONAME "libarchive.so.13"
#endif

typedef struct ArchiveApi {
    void *handle;
    __typeof__(archive_read_new) *read_new;
    __typeof__(archive_read_support_filter_all) *read_support_filter_all;
    __typeof__(archive_read_support_format_all) *read_support_format_all;
    __typeof__(archive_read_open_fd) *read_open_fd;
    __typeof__(archive_read_next_header) *read_next_header;
    __typeof__(archive_read_data_block) *read_data_block;
    __typeof__(archive_read_free) *read_free;
    __typeof__(archive_error_string) *error_string;
    __typeof__(archive_entry_pathname) *entry_pathname;
    __typeof__(archive_entry_mode) *entry_mode;
    __typeof__(archive_entry_filetype) *entry_filetype;
    __typeof__(archive_entry_hardlink) *entry_hardlink;
    __typeof__(archive_entry_symlink) *entry_symlink;
    __typeof__(archive_entry_size) *entry_size;
    __typeof__(archive_entry_size_is_set) *entry_size_is_set;
} ArchiveApi;

int archive_api_open(ArchiveApi *ret, char **why);
void archive_api_close(ArchiveApi *api);
