/* A stand-in process executable for the relup example root. The example
 * service of the runtime issue replaces it with a real server. */
#include <unistd.h>

int main(void)
{
    pause();
    return 0;
}
