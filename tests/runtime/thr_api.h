#pragma once
/* The api of thr_module.c, the module test-threads runs on several
 * threads. */

typedef struct ThrApi {
    int version;
    /* One call: returns the version that ran; counts itself in the state's
     * `active` while it runs. */
    int (*work)(void *state);
    /* Another module's api table, through the runtime's RelHost. */
    const void *(*peer)(const char *module);
    /* How many code_change calls the state has been through. */
    int (*changes)(void *state);
} ThrApi;
