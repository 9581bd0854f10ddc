/* The floor of bench/relup-bench: libyaml's event parser run over the same
 * YAML files relctl relup reads (each release.yaml and every app.yaml of
 * both releases), each file read whole, events pulled and dropped. No
 * definitions, no checks, no relup: what parsing the input alone costs.
 *
 * Usage: yaml-floor FILE... (prints the number of events) */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

int main(int argc, char **argv)
{
    size_t events = 0, cap = 0;
    char *buf = NULL;
    for (int i = 1; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0) {
            perror(argv[i]);
            return 1;
        }
        if ((size_t)st.st_size + 1 > cap) {
            cap = (size_t)st.st_size + 1;
            free(buf);
            buf = malloc(cap);
            if (!buf)
                return 1;
        }
        ssize_t n = read(fd, buf, (size_t)st.st_size);
        (void)close(fd);
        if (n != st.st_size) {
            fprintf(stderr, "%s: short read\n", argv[i]);
            return 1;
        }
        yaml_parser_t p;
        if (!yaml_parser_initialize(&p))
            return 1;
        yaml_parser_set_input_string(&p, (const unsigned char *)buf, (size_t)n);
        for (;;) {
            yaml_event_t e;
            if (!yaml_parser_parse(&p, &e)) {
                fprintf(stderr, "%s: %s\n", argv[i], p.problem ? p.problem : "syntax error");
                return 1;
            }
            events++;
            yaml_event_type_t t = e.type;
            yaml_event_delete(&e);
            if (t == YAML_STREAM_END_EVENT)
                break;
        }
        yaml_parser_delete(&p);
    }
    free(buf);
    printf("%zu\n", events);
    return 0;
}
