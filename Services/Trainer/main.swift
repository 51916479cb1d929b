// The trainer process: wires ServiceKit to the trainer service's handlers. Its rpcs other than Health
// answer UNIMPLEMENTED until the issues that build them land.
import Foundation
import ServiceKit

exit(ServiceRuntime.main(kind: "trainer"))
